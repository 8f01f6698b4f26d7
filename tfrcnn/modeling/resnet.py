"""ResNet backbone: the C2..C5 feature maps the FPN reads, with PyTorch's exact geometry.

Stage i (0-based, torchvision's `layer{i+1}`) has stride 4·2^i and 64·2^i·expansion channels: (64, 128, 256,
512) for depth 18/34 (BasicBlock) and (256, 512, 1024, 2048) for 50/101 (Bottleneck, expansion 4). A map of
size n becomes ceil(n / 2) at every stride-2 step, as in PyTorch.

Layer names are torchvision's state_dict names with '.' → '_', so a checkpoint converter is a name table:

  conv1, bn1                                  stem: 7×7/2 conv (no bias) and its norm; then ReLU, 3×3/2 max-pool
  layer{s}_{b}                                block b of stage s (s = 1..4): a `BasicBlock` or `Bottleneck`
  layer{s}_{b}_conv{k}, layer{s}_{b}_bn{k}    k = 1, 2 (BasicBlock) or 1, 2, 3 (Bottleneck); convs have no bias
  layer{s}_{b}_downsample_0, ..._1            the shortcut's 1×1 strided conv and its norm (first block of a stage)

(Keras variable paths nest them: `backbone/layer1_0/layer1_0_conv1/kernel`.) A torch conv weight (O, I, kh, kw)
is the Keras kernel (kh, kw, I, O); a norm's weight, bias, running_mean, running_var are gamma, beta,
moving_mean, moving_variance.

Padding is PyTorch's: symmetric zeros, then a 'valid' convolution (`PaddedConv2D`). Keras's padding="same"
puts the extra pixel of a stride-2 conv at the bottom/right only, which shifts the whole feature map.

Freezing follows MMDetection: `frozen_stages` k makes the stem and stages 1..k non-trainable, and a
non-trainable Keras BatchNormalization also runs on its moving statistics, as MMDetection's `eval()` on frozen
stages does. `norm_eval` runs every BN on its moving statistics even when the model trains;
`norm_cfg.requires_grad: false` keeps BN gamma/beta fixed. Setting `backbone.trainable = True` (e.g. through
a parent model) re-applies these rules instead of unfreezing everything.

A BN that trains on batch statistics (norm_eval false) runs TensorFlow's fused batch norm (`batch_norm_train`) on
statistics summed with PyTorch's precision, and updates moving_variance with the unbiased batch variance as PyTorch
does (Keras' own layer uses the biased one).
"""
import keras
import tensorflow as tf

from tfrcnn.config import BackboneCfg, NormCfg
from tfrcnn.modeling.layers import ConfiguredLayer


def _onednn_enabled():
    """Whether TensorFlow runs its oneDNN kernels (on by default on CPUs with AVX-512; TF_ENABLE_ONEDNN_OPTS)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # a TensorFlow without the query: assume the default Eigen kernels
        return False


# oneDNN has no gradient kernels for explicit padding (TensorFlow then runs Eigen's, about half as fast there): a
# strided conv that "SAME" cannot express pads with tf.pad first on such builds.
_ONEDNN = _onednn_enabled()


def _kaiming_normal():
    # torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / (kh·kw·out)), untruncated.
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal")


@keras.saving.register_keras_serializable("tfrcnn")
class PaddedConv2D(keras.layers.Conv2D):
    """Conv2D (NHWC) with PyTorch's symmetric zero padding: `pad` pixels on each side of H and W.

    Output size per axis: floor((n + 2·pad - kernel) / stride) + 1, as torch.nn.Conv2d(padding=pad).
    Other arguments are keras.layers.Conv2D's (`padding` and `data_format` are fixed).
    """

    def __init__(self, filters, kernel_size, strides=1, pad=0, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding="valid", data_format="channels_last",
                         **kwargs)
        self.pad = int(pad)

    def convolution_op(self, inputs, kernel):
        # The padding goes into the convolution instead of a tf.pad copy of the input: one pass less over the
        # largest maps, forward and backward. A stride-1 conv whose pad is half its odd kernel pads exactly as
        # "SAME" does; TensorFlow's oneDNN kernels (AVX-512 CPUs) take "SAME" but fall back to Eigen for the
        # gradients of explicit padding, twice as slow there (BENCHMARKS.md, "Main job: the training step").
        p = self.pad
        same = all(s == 1 for s in self.strides) and all(
            k % 2 == 1 and p == (k - 1) // 2 * d for k, d in zip(self.kernel_size, self.dilation_rate))
        if p and not same and _ONEDNN:
            inputs, p = tf.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]]), 0
        padding = "SAME" if p and same else [[0, 0], [p, p], [p, p], [0, 0]] if p else "VALID"
        return tf.nn.conv2d(inputs, kernel, self.strides, padding, dilations=self.dilation_rate)

    def compute_output_shape(self, input_shape):
        grow = lambda n: None if n is None else n + 2 * self.pad  # noqa: E731
        b, h, w, c = input_shape
        return super().compute_output_shape((b, grow(h), grow(w), c))

    def get_config(self):
        config = super().get_config()
        for fixed in ("padding", "data_format"):
            config.pop(fixed, None)
        return {**config, "pad": self.pad}


def _conv(filters, kernel, stride, pad, name, dtype):
    return PaddedConv2D(filters, kernel, strides=stride, pad=pad, use_bias=False,
                        kernel_initializer=_kaiming_normal(), name=name, dtype=dtype)


def _norm(norm_cfg, name, dtype):
    """BN (PyTorch momentum 0.1 = Keras momentum 0.9) or GN; gamma 1, beta 0. eps 0.0 is used as given."""
    if norm_cfg.type == "BN":
        return keras.layers.BatchNormalization(momentum=0.9, epsilon=norm_cfg.eps, name=name, dtype=dtype)
    return keras.layers.GroupNormalization(groups=norm_cfg.num_groups, epsilon=norm_cfg.eps, name=name, dtype=dtype)


def _channels(c):
    return (None, None, None, c)


def conv_norm(conv, norm, x, training=None, relu=False):
    """`norm(conv(x))` (then ReLU), with a BN that runs on its moving statistics folded into the convolution.

    Such a BN is an affine map per channel, y = s·conv(x) + (beta - mean·s) with s = gamma / sqrt(var + eps), so
    the conv runs with kernel·s and a bias, which TensorFlow fuses with the ReLU into one kernel: no separate
    passes over the activation for the norm (and its gradient), the same function of x, kernel, gamma and beta up
    to float rounding. A BN on batch statistics (training a trainable BN) runs `batch_norm_train`; GroupNorm the
    layer itself.

    Args:
      conv: a built PaddedConv2D without bias; norm: its BatchNormalization or GroupNormalization.
      x: [B, H, W, C_in] in the conv's compute dtype.
    Returns: [B, H', W', C_out] as `norm(conv(x))` (ReLU applied when `relu`).
    """
    batch_stats = bool(training) and norm.trainable
    if isinstance(norm, keras.layers.BatchNormalization) and batch_stats:
        y = batch_norm_train(norm, conv(x))
        return tf.nn.relu(y) if relu else y
    if not isinstance(norm, keras.layers.BatchNormalization) or conv.use_bias:
        y = norm(conv(x), training=training)
        return tf.nn.relu(y) if relu else y
    f32 = lambda v: tf.cast(v, tf.float32)  # noqa: E731  (the fold is computed in float32)
    scale = tf.math.rsqrt(f32(norm.moving_variance) + norm.epsilon)
    if norm.scale:
        scale = scale * f32(norm.gamma)
    bias = -f32(norm.moving_mean) * scale
    if norm.center:
        bias = bias + f32(norm.beta)
    dtype = conv.compute_dtype
    kernel = tf.cast(f32(conv.kernel) * scale, dtype)
    y = tf.nn.bias_add(conv.convolution_op(x, kernel), tf.cast(bias, dtype))
    return tf.nn.relu(y) if relu else y


def channel_moments(x):
    """Per-channel mean and biased variance [C] of float32 NHWC `x`, summed with about PyTorch's precision.

    TensorFlow's CPU reductions (tf.nn.moments, the fused batch norm's own statistics) accumulate the B·H·W
    elements of a channel one after another: errors of 1e-5 (mean) and 1e-4 (variance) relative at the main job's
    C2, against PyTorch's 1e-6. They flip ReLUs that sit that close to zero, and each flip moves a gradient
    element by its whole value: per-layer gradients then differ from torchvision's float64 ones by up to 4e-4 in
    cosine (tests/modeling/test_train_parity.py). Here the fused kernel takes the moments of each (column,
    channel) over the B·H rows (x viewed as [1, B·H, 1, W·C]), and the law of total variance combines the W
    columns: sums of at most max(B·H, W) terms, about 1e-7, for the price of one more pass over x (the fastest
    of the ways tried: chained tf.reduce_sum calls take twice as long).
    """
    shape = tf.shape(x)
    rows, columns = shape[0] * shape[1], shape[2] * shape[3]
    ones = tf.ones([columns], tf.float32)
    zeros = tf.zeros([columns], tf.float32)
    _, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=tf.reshape(x, [1, rows, 1, columns]), scale=ones, offset=zeros, mean=zeros, variance=ones, epsilon=0.0,
        exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
    n = tf.cast(rows, tf.float32)
    mean = tf.reshape(mean, [shape[2], shape[3]])  # [W, C]
    variance = tf.reshape(variance, [shape[2], shape[3]]) * ((n - 1.0) / n)  # the kernel's is unbiased
    channel_mean = tf.reduce_mean(mean, axis=0)
    return channel_mean, tf.reduce_mean(variance, axis=0) + tf.reduce_mean(
        tf.math.squared_difference(mean, channel_mean), axis=0)


def batch_norm_train(norm, x):
    """What `norm(x, training=True)` computes for a built keras BatchNormalization over the last axis of NHWC `x`, as
    one fused kernel forward and one backward (TensorFlow's FusedBatchNormV3 / FusedBatchNormGradV3) instead of
    Keras' separate moments, normalization and their gradients: a third of the BN time of a small model's training
    step on CPU.

    Normalizes with the batch statistics (biased variance) and updates the moving statistics with
    `momentum`, the variance term unbiased (n / (n - 1)) as PyTorch's BatchNorm2d does. Computes in float32 and
    returns the layer's compute dtype, as the Keras layer does. Without a GPU the statistics are `channel_moments`
    (the CPU kernels' own lose precision) and the kernels take them as given; on a GPU cuDNN computes them, with
    its own (exact) reductions and saved state, which its backward kernel needs.
    """
    if norm.axis not in (-1, 3, [-1], [3]) or getattr(norm, "renorm", False):
        return norm(x, training=True)
    channels = x.shape[-1]
    f32 = lambda v: tf.cast(v, tf.float32)  # noqa: E731
    gamma = f32(norm.gamma) if norm.scale else tf.ones([channels], tf.float32)
    beta = f32(norm.beta) if norm.center else tf.zeros([channels], tf.float32)
    x = f32(x)
    if tf.config.list_logical_devices("GPU"):
        y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=f32(norm.moving_mean), variance=f32(norm.moving_variance),
            epsilon=norm.epsilon, exponential_avg_factor=1.0 - norm.momentum, data_format="NHWC", is_training=True)
        # With exponential_avg_factor the kernel returns the updated moving averages themselves.
    else:
        batch_mean, batch_variance = channel_moments(x)
        y = _normalize_with_batch_moments(x, gamma, beta, batch_mean, batch_variance, norm.epsilon)
        n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
        unbiased = batch_variance * n / tf.maximum(n - 1.0, 1.0)
        mean = norm.momentum * f32(norm.moving_mean) + (1.0 - norm.momentum) * batch_mean
        variance = norm.momentum * f32(norm.moving_variance) + (1.0 - norm.momentum) * unbiased
    norm.moving_mean.assign(tf.stop_gradient(tf.cast(mean, norm.moving_mean.dtype)))
    norm.moving_variance.assign(tf.stop_gradient(tf.cast(variance, norm.moving_variance.dtype)))
    return tf.cast(y, norm.compute_dtype)


def _normalize_with_batch_moments(x, gamma, beta, mean, variance, epsilon):
    """(x - mean) / sqrt(variance + epsilon) · gamma + beta with the batch moments of x given: the fused kernels in
    inference mode forward, and their training-mode backward (which differentiates through the moments too), whose
    CPU kernel takes the saved batch mean and variance."""
    mean, variance = tf.stop_gradient(mean), tf.stop_gradient(variance)

    @tf.custom_gradient
    def normalize(x, gamma, beta):
        y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=mean, variance=variance, epsilon=epsilon, data_format="NHWC",
            is_training=False)

        def grad(dy):
            dx, dgamma, dbeta, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=dy, x=x, scale=gamma, reserve_space_1=mean, reserve_space_2=variance,
                reserve_space_3=tf.zeros([0], tf.float32), epsilon=epsilon, data_format="NHWC", is_training=True)
            return dx, dgamma, dbeta
        return y, grad
    return normalize(x, gamma, beta)


class _ResidualBlock(keras.layers.Layer):
    """Shared parts of BasicBlock and Bottleneck: the shortcut, building, config.

    Args:
      planes: width of the block's 3×3 conv; the block outputs planes·expansion channels.
      stride: 1, or 2 for the first block of stages 2..4.
      downsample: whether the shortcut is a 1×1 conv (stride `stride`) + norm instead of the identity.
      norm_cfg: `NormCfg` or its dict.
      style: "pytorch" or "caffe": where a Bottleneck puts its stride (ignored by BasicBlock).
    Call: x [B, H, W, C_in] → [B, ceil(H / stride), ceil(W / stride), planes·expansion].
    """
    expansion = 1

    def __init__(self, planes, stride=1, downsample=False, norm_cfg=None, style="pytorch", **kwargs):
        super().__init__(**kwargs)
        norm_cfg = NormCfg.from_dict(norm_cfg) if isinstance(norm_cfg, dict) else (norm_cfg or NormCfg())
        self.planes, self.stride, self.style, self.norm_cfg = planes, stride, style, norm_cfg
        self.out_channels = planes * self.expansion
        self.convs, self.norms = [], []
        for k, (filters, kernel, conv_stride) in enumerate(self._conv_specs(), start=1):
            self.convs.append(_conv(filters, kernel, conv_stride, kernel // 2, f"{self.name}_conv{k}",
                                    self.dtype_policy))
            self.norms.append(_norm(norm_cfg, f"{self.name}_bn{k}", self.dtype_policy))
        self.downsample = [] if not downsample else [
            _conv(self.out_channels, 1, stride, 0, f"{self.name}_downsample_0", self.dtype_policy),
            _norm(norm_cfg, f"{self.name}_downsample_1", self.dtype_policy)]

    def _conv_specs(self):
        """(filters, kernel, stride) of each conv on the residual branch."""
        raise NotImplementedError

    def build(self, input_shape):
        channels = input_shape[-1]
        for conv, norm in zip(self.convs, self.norms):
            conv.build(_channels(channels))
            channels = conv.filters
            norm.build(_channels(channels))
        if self.downsample:
            self.downsample[0].build(_channels(input_shape[-1]))
            self.downsample[1].build(_channels(self.out_channels))

    def call(self, x, training=None):
        shortcut = x
        if self.downsample:
            shortcut = conv_norm(*self.downsample, x, training)
        last = len(self.convs) - 1
        for k, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = conv_norm(conv, norm, x, training, relu=k < last)
        return tf.nn.relu(x + shortcut)

    def compute_output_shape(self, input_shape):
        ceil_div = lambda n: None if n is None else -(-n // self.stride)  # noqa: E731
        return (input_shape[0], ceil_div(input_shape[1]), ceil_div(input_shape[2]), self.out_channels)

    def get_config(self):
        return {**super().get_config(), "planes": self.planes, "stride": self.stride,
                "downsample": bool(self.downsample), "norm_cfg": self.norm_cfg.to_dict(), "style": self.style}


@keras.saving.register_keras_serializable("tfrcnn")
class BasicBlock(_ResidualBlock):
    """ResNet-18/34 block: 3×3 conv (stride) ▸ norm ▸ ReLU ▸ 3×3 conv ▸ norm, + shortcut, ReLU."""
    expansion = 1

    def _conv_specs(self):
        return [(self.planes, 3, self.stride), (self.planes, 3, 1)]


@keras.saving.register_keras_serializable("tfrcnn")
class Bottleneck(_ResidualBlock):
    """ResNet-50/101 block: 1×1 ▸ 3×3 ▸ 1×1 (×4 channels), norm after each, ReLU between, + shortcut, ReLU.

    style "pytorch" (torchvision, MMDetection's default) strides the 3×3 conv; "caffe" strides the first 1×1.
    """
    expansion = 4

    def _conv_specs(self):
        s1, s2 = (self.stride, 1) if self.style == "caffe" else (1, self.stride)
        return [(self.planes, 1, s1), (self.planes, 3, s2), (self.planes * 4, 1, 1)]


_ARCHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
          50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3))}


@keras.saving.register_keras_serializable("tfrcnn")
class ResNet(ConfiguredLayer):
    """MMDetection's ResNet backbone, configured by `BackboneCfg` (`model.backbone`).

    Args:
      cfg: `BackboneCfg`: depth 18/34/50/101, num_stages (1..4), out_indices (stage i gives C_{i+2}),
        frozen_stages, norm_cfg (BN or GN, eps, requires_grad), norm_eval, style.
    Call: images float [B, H, W, 3] (normalized network input), training → list, one per out_index i in
      increasing order, of [B, H_i, W_i, 64·2^i·expansion], H_i = H / 4·2^i rounded up at each halving
      (64×96 → C5 2×3, 65×97 → C5 3×4). Outputs follow the layer's dtype policy (bfloat16 under mixed_bfloat16).
    Attributes: out_channels and strides of the returned maps, e.g. [256, 512, 1024, 2048] and [4, 8, 16, 32].
    """
    SECTIONS = {"cfg": BackboneCfg}

    def __init__(self, cfg=None, name="backbone", **kwargs):
        super().__init__(name=name, **kwargs)
        cfg = cfg or BackboneCfg()
        block, depths = _ARCHS[cfg.depth]
        if not 1 <= cfg.num_stages <= 4:
            raise ValueError(f"ResNet: num_stages must be in 1..4, got {cfg.num_stages}")
        if not cfg.out_indices or any(not 0 <= i < cfg.num_stages for i in cfg.out_indices):
            raise ValueError(f"ResNet: out_indices {cfg.out_indices} must be stage indices below num_stages "
                             f"{cfg.num_stages}")
        if not -1 <= cfg.frozen_stages <= cfg.num_stages:
            raise ValueError(f"ResNet: frozen_stages must be in -1..{cfg.num_stages}, got {cfg.frozen_stages}")
        self.cfg = cfg
        d = self.dtype_policy
        self.conv1 = _conv(64, 7, 2, 3, "conv1", d)
        self.bn1 = _norm(cfg.norm_cfg, "bn1", d)
        stages, in_channels = [], 64
        for s in range(cfg.num_stages):
            planes, stride = 64 * 2 ** s, (1 if s == 0 else 2)
            stage = []
            for b in range(depths[s]):
                first = b == 0
                downsample = first and (stride != 1 or in_channels != planes * block.expansion)
                stage.append(block(planes, stride if first else 1, downsample, cfg.norm_cfg, cfg.style,
                                   name=f"layer{s + 1}_{b}", dtype=d))
                in_channels = planes * block.expansion
            stages.append(stage)
        self.stages = stages
        self.out_channels = [64 * 2 ** i * block.expansion for i in sorted(cfg.out_indices)]
        self.strides = [4 * 2 ** i for i in sorted(cfg.out_indices)]

    def build(self, input_shape):
        self.conv1.build(_channels(input_shape[-1]))
        self.bn1.build(_channels(64))
        channels = 64
        for stage in self.stages:
            for block in stage:
                block.build(_channels(channels))
                channels = block.out_channels
        self._freeze()

    def _freeze(self):
        """Applies frozen_stages and norm_cfg.requires_grad to the (built) sublayers."""
        if not self.trainable:
            return  # everything is frozen already
        frozen = [self.conv1, self.bn1] if self.cfg.frozen_stages >= 0 else []
        for stage in self.stages[:max(self.cfg.frozen_stages, 0)]:
            frozen += stage
        for layer in frozen:
            layer.trainable = False
        if not self.cfg.norm_cfg.requires_grad:
            for layer in self._flatten_layers(include_self=False):
                if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.GroupNormalization)):
                    layer.gamma.trainable = False
                    layer.beta.trainable = False

    @property
    def trainable(self):
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        keras.layers.Layer.trainable.fset(self, value)  # sets every sublayer, frozen ones included
        if getattr(self, "built", False):
            self._freeze()

    def call(self, images, training=None):
        # norm_eval: BN normalizes with (and keeps) its moving statistics even while the model trains; the
        # blocks hold nothing else that depends on `training`.
        training = False if self.cfg.norm_eval else training
        x = conv_norm(self.conv1, self.bn1, images, training, relu=True)
        # PyTorch pads the max-pool with -inf; zeros are exact here because x >= 0 after the ReLU and every
        # 3×3 window holds at least one real pixel.
        x = tf.nn.max_pool2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), 3, 2, "VALID")
        outs = []
        for i, stage in enumerate(self.stages):
            for block in stage:
                x = block(x, training=training)
            if i in self.cfg.out_indices:
                outs.append(x)
        return outs

    def compute_output_shape(self, input_shape):
        shapes, (b, h, w) = [], input_shape[:3]
        channels = iter(self.out_channels)
        for i in range(self.cfg.num_stages):
            for _ in range(2 if i == 0 else 1):  # conv1 and the max-pool halve twice before stage 0
                h, w = [None if n is None else -(-n // 2) for n in (h, w)]
            if i in self.cfg.out_indices:
                shapes.append((b, h, w, next(channels)))
        return shapes
