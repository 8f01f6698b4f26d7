"""FPN neck: merges the backbone's C2..C5 top-down into P2..P5, plus extra coarser levels (P6).

For the L backbone levels used (in_channels[start_level:]):
  lateral_i = lateral_convs_i(C_i)                          1×1 conv with bias
  merged_i  = lateral_i + nearest(merged_{i+1}, size of lateral_i)   top-down, coarsest first
  P_i       = fpn_convs_i(merged_i)                         3×3 conv, padding 1, with bias; no norm, no ReLU
Then num_outs - L extra levels, each half the size (ceil) of the one before:
  add_extra_convs False       P_{k+1} = max-pool(kernel 1, stride 2)(P_k) = P_k[:, ::2, ::2]
                              (MMDetection's default, torchvision's LastLevelMaxPool)
  "on_input" / "on_output"    fpn_convs_{L}: 3×3 stride-2 conv (padding 1) on the last backbone input (C5) or on
                              the last output (P5); each further fpn_convs_{L+j} convolves the previous extra
                              level (MMDetection with relu_before_extra_convs false: no ReLU in between)

Layer names are MMDetection's (`neck.lateral_convs.{i}.conv` → `lateral_convs_{i}`, `neck.fpn_convs.{i}.conv` →
`fpn_convs_{i}`), i counted from start_level. torchvision's `backbone.fpn.inner_blocks.{i}.0` is
`lateral_convs_{i}` and `backbone.fpn.layer_blocks.{i}.0` is `fpn_convs_{i}`; a torch conv weight (O, I, kh, kw)
is the Keras kernel (kh, kw, I, O). Keras variable paths are `neck/fpn_convs_0/kernel`, `.../bias`.
"""
import keras
import numpy as np
import tensorflow as tf

from tfrcnn.config import NeckCfg
from tfrcnn.modeling.layers import ConfiguredLayer
from tfrcnn.modeling.resnet import PaddedConv2D


def upsample_nearest(x, size):
    """PyTorch's `F.interpolate(x, size=size, mode="nearest")` for NHWC x, as gathers whose gradient XLA compiles.

    Along each axis, output index i reads input index min(floor(i · (n_in / n_out)), n_in - 1), with the scale
    and product in float32 as PyTorch computes them. An exact 2× axis is a `tf.repeat` (its gradient is a
    reshape-sum rather than a scatter). `tf.image.resize(method="nearest")` is not used: its gradient has no XLA
    kernel, and its index rounding differs from PyTorch's.

    Args:
      x: [B, H, W, C].
      size: (out_h, out_w), Python ints or int32 scalars (dynamic sizes work outside XLA).
    Returns:
      [B, out_h, out_w, C], same dtype.
    """
    for axis, n_out in zip((1, 2), size):
        x = _nearest_along(x, axis, n_out)
    return x


def _nearest_along(x, axis, n_out):
    n_in = x.shape[axis]
    if isinstance(n_in, int) and isinstance(n_out, int):
        if n_out == n_in:
            return x
        if n_out == 2 * n_in:
            return tf.repeat(x, 2, axis=axis)
        # Static sizes: the indices are a constant, computed in float32 exactly as PyTorch does.
        scale = np.float32(n_in) / np.float32(n_out)
        index = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int32)
        return tf.gather(x, np.minimum(index, n_in - 1), axis=axis)
    n_in = tf.shape(x)[axis] if n_in is None else n_in
    scale = tf.cast(n_in, tf.float32) / tf.cast(n_out, tf.float32)
    index = tf.cast(tf.floor(tf.cast(tf.range(n_out), tf.float32) * scale), tf.int32)
    return tf.gather(x, tf.minimum(index, n_in - 1), axis=axis)


def spatial_size(x):
    """(h, w) of an NHWC tensor: Python ints where static, int32 scalars otherwise."""
    dynamic = tf.shape(x)
    return tuple(x.shape[a] if x.shape[a] is not None else dynamic[a] for a in (1, 2))


@keras.saving.register_keras_serializable("tfrcnn")
class FPN(ConfiguredLayer):
    """MMDetection's FPN, configured by `NeckCfg` (`model.neck`).

    Args:
      cfg: `NeckCfg`: in_channels (one per backbone output), out_channels, num_outs, start_level,
        add_extra_convs (False, "on_input", "on_output").
    Call: features, a list of len(in_channels) maps [B, H_l, W_l, in_channels[l]], finest first, each level
      half the size of the one before (rounded up) → list of num_outs maps [B, H_k, W_k, out_channels]: the
      levels from start_level, then the extra levels (P2..P6 for the default config).
    Init: convs xavier uniform, biases 0 (MMDetection's FPN).
    """
    SECTIONS = {"cfg": NeckCfg}

    def __init__(self, cfg=None, name="neck", **kwargs):
        super().__init__(name=name, **kwargs)
        cfg = cfg or NeckCfg()
        levels = len(cfg.in_channels) - cfg.start_level
        if levels < 1:
            raise ValueError(f"FPN: start_level {cfg.start_level} leaves no input level of {cfg.in_channels}")
        if cfg.num_outs < levels:
            raise ValueError(f"FPN: num_outs {cfg.num_outs} is less than the {levels} input levels used")
        self.cfg = cfg
        self.lateral_convs = [self._conv(1, 1, f"lateral_convs_{i}") for i in range(levels)]
        fpn_convs = [self._conv(3, 1, f"fpn_convs_{i}") for i in range(levels)]
        if cfg.add_extra_convs:
            fpn_convs += [self._conv(3, 2, f"fpn_convs_{i}") for i in range(levels, cfg.num_outs)]
        self.fpn_convs = fpn_convs

    def _conv(self, kernel, stride, name):
        # torchvision's kaiming_uniform_(a=1): gain sqrt(2 / (1 + a^2)) = 1, bound sqrt(3 / fan_in).
        init = {"mmdet": "glorot_uniform",
                "torchvision": keras.initializers.VarianceScaling(1.0, mode="fan_in", distribution="uniform")}
        return PaddedConv2D(self.cfg.out_channels, kernel, strides=stride, pad=kernel // 2,
                            kernel_initializer=init[self.cfg.init], bias_initializer="zeros",
                            name=name, dtype=self.dtype_policy)

    def build(self, input_shape):
        cfg, levels = self.cfg, len(self.lateral_convs)
        used = cfg.in_channels[cfg.start_level:]
        for conv, channels in zip(self.lateral_convs, used):
            conv.build((None, None, None, channels))
        for i, conv in enumerate(self.fpn_convs):
            first_extra_on_input = i == levels and cfg.add_extra_convs == "on_input"
            conv.build((None, None, None, used[-1] if first_extra_on_input else cfg.out_channels))

    def call(self, features, training=None):
        cfg = self.cfg
        if len(features) != len(cfg.in_channels):
            raise ValueError(f"FPN: got {len(features)} feature maps for in_channels {cfg.in_channels}")
        inputs = list(features)[cfg.start_level:]
        levels = len(inputs)
        merged = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(levels - 1, 0, -1):
            merged[i - 1] = merged[i - 1] + upsample_nearest(merged[i], spatial_size(merged[i - 1]))
        outs = [conv(x) for conv, x in zip(self.fpn_convs, merged)]
        if not cfg.add_extra_convs:
            while len(outs) < cfg.num_outs:
                outs.append(outs[-1][:, ::2, ::2])
        elif cfg.num_outs > levels:
            x = inputs[-1] if cfg.add_extra_convs == "on_input" else outs[-1]
            for conv in self.fpn_convs[levels:]:
                x = conv(x)
                outs.append(x)
        return outs

    def compute_output_shape(self, input_shape):
        ceil_half = lambda n: None if n is None else -(-n // 2)  # noqa: E731
        shapes = [(s[0], s[1], s[2], self.cfg.out_channels) for s in input_shape[self.cfg.start_level:]]
        while len(shapes) < self.cfg.num_outs:
            b, h, w, c = shapes[-1]
            shapes.append((b, ceil_half(h), ceil_half(w), c))
        return shapes
