import numpy as np
import pytest
import tensorflow as tf
import keras
import torch
import torchvision

from tfrcnn.config import BackboneCfg, NormCfg
from tfrcnn.modeling.resnet import ResNet, PaddedConv2D, batch_norm_train, channel_moments
from torchvision_resnet import randomize_batchnorm, stage_outputs


def backbone(**kwargs):
    norm = kwargs.pop("norm_cfg", {})
    return ResNet(BackboneCfg(norm_cfg=NormCfg(**norm), **kwargs))


def layers_by_name(model):
    return {layer.name: layer for layer in model._flatten_layers()}


def copy_from_torchvision(tv_model, ours):
    """Loads a torchvision ResNet's state_dict (fc excluded) into `ours` by the documented name table."""
    layers = layers_by_name(ours)
    norm_names = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
    copied = 0
    for key, value in tv_model.state_dict().items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        module, param = key.rsplit(".", 1)
        layer, value = layers[module.replace(".", "_")], value.numpy()
        if value.ndim == 4:  # conv (O, I, kh, kw) → (kh, kw, I, O)
            layer.kernel.assign(value.transpose(2, 3, 1, 0))
        else:
            getattr(layer, norm_names[param]).assign(value)
        copied += 1
    assert copied == len(ours.weights)


@pytest.mark.parametrize("depth, channels", [(18, (64, 128, 256, 512)), (34, (64, 128, 256, 512)),
                                             (50, (256, 512, 1024, 2048)), (101, (256, 512, 1024, 2048))])
def test_shapes_channels_and_parameter_count(depth, channels):
    model = backbone(depth=depth, frozen_stages=-1)
    # 64×96: conv1 → 32×48, max-pool → 16×24 = C2 (stride 4), then halving: 8×12, 4×6, 2×3.
    outs = model(tf.zeros([2, 64, 96, 3]))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 24, channels[0]), (2, 8, 12, channels[1]),
                                              (2, 4, 6, channels[2]), (2, 2, 3, channels[3])]
    # 65×97: every stride-2 step rounds up (PyTorch's padding): 33×49 → C2 17×25 → 9×13 → 5×7 → 3×4.
    outs = model(tf.zeros([1, 65, 97, 3]))
    assert [tuple(o.shape[1:3]) for o in outs] == [(17, 25), (9, 13), (5, 7), (3, 4)]
    assert model.compute_output_shape((1, 65, 97, 3)) == [tuple(o.shape) for o in outs]
    assert model.out_channels == list(channels) and model.strides == [4, 8, 16, 32]
    # torchvision counts parameters without BN running statistics; ours are the trainable weights here.
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    expected = sum(p.numel() for name, p in reference.named_parameters() if not name.startswith("fc."))
    ours = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert ours == expected
    assert ours == {18: 11_176_512, 50: 23_508_032}.get(depth, ours)


@pytest.mark.parametrize("depth, eps", [(18, 1e-5), (18, 0.0), (50, 1e-5)])
def test_numerical_parity_with_torchvision(depth, eps):
    torch.manual_seed(depth)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    randomize_batchnorm(reference, eps)
    model = backbone(depth=depth, norm_cfg={"eps": eps})
    model.build((None, None, None, 3))
    copy_from_torchvision(reference, model)

    x = torch.randn(1, 3, 64, 96)
    expected = stage_outputs(reference, x)
    outs = model(tf.constant(x.permute(0, 2, 3, 1).numpy()), training=False)
    for ours, ref in zip(outs, expected):
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_padded_conv_matches_pytorch_not_keras_same():
    # 4×4 ones, 3×3 kernel of ones, stride 2. PyTorch pads 1 on every side: output (0,0) sees rows/cols {0,1}
    # → 2·2 = 4; (0,1) sees rows {0,1} × cols {1,2,3} → 6; (1,1) rows/cols {1,2,3} → 9.
    # Keras "same" would pad only bottom/right, so its (0,0) would see 3·3 = 9.
    conv = PaddedConv2D(1, 3, strides=2, pad=1, use_bias=False, kernel_initializer="ones")
    out = conv(tf.ones([1, 4, 4, 1]))[0, :, :, 0]
    np.testing.assert_allclose(out, [[4, 6], [6, 9]])
    assert conv.compute_output_shape((1, 4, 4, 1)) == (1, 2, 2, 1)
    assert PaddedConv2D.from_config(conv.get_config()).pad == 1


def test_caffe_style_moves_the_stride_to_the_first_1x1():
    convs = {}
    for style in ("pytorch", "caffe"):
        model = backbone(depth=50, style=style)
        model.build((None, None, None, 3))
        if style == "caffe":  # ceil-halving holds for a strided 1×1 too: floor((n - 1) / 2) + 1
            outs = model(tf.zeros([1, 65, 97, 3]))
            assert [tuple(o.shape[1:3]) for o in outs] == [(17, 25), (9, 13), (5, 7), (3, 4)]
        convs[style] = {l.name: (l.strides, l.kernel.shape) for l in model._flatten_layers()
                        if isinstance(l, PaddedConv2D)}
    assert convs["pytorch"].keys() == convs["caffe"].keys()
    differ = {name for name in convs["pytorch"] if convs["pytorch"][name] != convs["caffe"][name]}
    assert differ == {f"layer{s}_0_conv{k}" for s in (2, 3, 4) for k in (1, 2)}
    for s in (2, 3, 4):
        assert convs["caffe"][f"layer{s}_0_conv1"][0] == (2, 2) and convs["caffe"][f"layer{s}_0_conv2"][0] == (1, 1)
        assert convs["pytorch"][f"layer{s}_0_conv1"][0] == (1, 1) and convs["pytorch"][f"layer{s}_0_conv2"][0] == (2, 2)


def test_out_indices_and_num_stages():
    model = backbone(depth=18, num_stages=3, out_indices=(1, 2))
    outs = model(tf.zeros([1, 64, 64, 3]))
    assert [tuple(o.shape) for o in outs] == [(1, 8, 8, 128), (1, 4, 4, 256)]
    assert model.strides == [8, 16] and "layer4_0" not in layers_by_name(model)
    with pytest.raises(ValueError, match="out_indices"):
        backbone(depth=18, num_stages=3, out_indices=(3,))


# ResNet-18 holds 60 trainable variables: stem conv1 + bn1 (gamma, beta) = 3; a BasicBlock has 2 convs + 2 norms
# = 6, plus 3 with a downsample; stage 1 = 2 blocks without downsample = 12; stages 2–4 = 9 + 6 = 15 each.
@pytest.mark.parametrize("frozen_stages, trainable", [(-1, 60), (0, 57), (1, 45), (4, 0)])
def test_frozen_stages_trainable_counts(frozen_stages, trainable):
    model = backbone(depth=18, frozen_stages=frozen_stages)
    model.build((None, None, None, 3))
    assert len(model.trainable_weights) == trainable
    # Setting trainable (as a parent model does) re-applies the freezing rather than unfreezing everything.
    model.trainable = False
    assert model.trainable_weights == []
    model.trainable = True
    assert len(model.trainable_weights) == trainable


def test_requires_grad_false_fixes_norm_affine():
    # 20 norms in ResNet-18 (stem 1, stage 1: 4, stages 2–4: 5 each): 60 - 2·20 = 20 conv kernels stay trainable.
    model = backbone(depth=18, frozen_stages=-1, norm_cfg={"requires_grad": False})
    model.build((None, None, None, 3))
    assert len(model.trainable_weights) == 20
    assert all(w.path.endswith("kernel") for w in model.trainable_weights)


def test_frozen_weights_do_not_change_after_an_optimizer_step():
    model = backbone(depth=18, frozen_stages=1, norm_eval=False)
    images = tf.random.stateless_normal([2, 64, 64, 3], seed=[1, 2])
    model.build(images.shape)
    before = {w.path: w.numpy() for w in model.weights}
    optimizer = keras.optimizers.SGD(learning_rate=0.1)
    with tf.GradientTape() as tape:
        loss = sum(tf.reduce_mean(tf.square(o)) for o in model(images, training=True))
    optimizer.apply(tape.gradient(loss, model.trainable_weights), model.trainable_weights)
    for w in model.weights:
        frozen = w.path.split("/")[1] in ("conv1", "bn1", "layer1_0", "layer1_1")
        changed = not np.array_equal(before[w.path], w.numpy())
        # Frozen BN layers also keep their moving statistics (they run in inference mode, as MMDetection's eval()).
        assert changed != frozen, w.path


@pytest.mark.parametrize("norm_eval", [True, False])
def test_norm_eval_keeps_moving_statistics(norm_eval):
    model = backbone(depth=18, frozen_stages=-1, norm_eval=norm_eval)
    images = tf.random.stateless_normal([2, 64, 64, 3], seed=[3, 4])
    model.build(images.shape)
    stats = [w for w in model.non_trainable_weights if "moving" in w.path]
    assert len(stats) == 40  # 20 BN layers × (mean, variance)
    before = [s.numpy() for s in stats]
    train_outs = model(images, training=True)
    changed = [not np.array_equal(b, s.numpy()) for b, s in zip(before, stats)]
    assert all(changed) if not norm_eval else not any(changed)
    if norm_eval:  # the BN layers normalized with the moving statistics: same as inference
        for a, b in zip(train_outs, model(images, training=False)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_batch_norm_train_is_keras_training_mode_with_pytorch_running_variance():
    x = tf.random.stateless_normal([3, 5, 4, 6], seed=[1, 2]) * 3.0 + 2.0
    ours, keras_bn = (keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5) for _ in range(2))
    for bn in (ours, keras_bn):
        bn.build(x.shape)
        bn.gamma.assign(np.linspace(0.5, 1.5, 6))
        bn.beta.assign(np.linspace(-1.0, 1.0, 6))
        bn.moving_variance.assign(np.full(6, 2.0))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y, expected = batch_norm_train(ours, x), keras_bn(x, training=True)
        loss, expected_loss = tf.reduce_sum(y * tf.sin(y)), tf.reduce_sum(expected * tf.sin(expected))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(tape.gradient(loss, [x, ours.gamma, ours.beta]),
                    tape.gradient(expected_loss, [x, keras_bn.gamma, keras_bn.beta])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    n = 3 * 5 * 4
    mean, var = x.numpy().mean((0, 1, 2)), x.numpy().var((0, 1, 2))
    np.testing.assert_allclose(ours.moving_mean, 0.1 * mean, rtol=1e-5, atol=1e-6)
    # PyTorch's running variance takes the unbiased batch variance; Keras' layer the biased one
    np.testing.assert_allclose(ours.moving_variance, 0.9 * 2.0 + 0.1 * var * n / (n - 1), rtol=1e-5)
    np.testing.assert_allclose(keras_bn.moving_variance, 0.9 * 2.0 + 0.1 * var, rtol=1e-5)


@pytest.mark.parametrize("shape", [(4, 96, 96, 16), (3, 6, 6, 8), (1, 1, 1, 4), (2, 3, 1, 5)])
def test_channel_moments_are_float64_s_within_a_few_roundings(shape):
    # Offset, scaled data over up to 36864 elements per channel: one accumulation over all of them (TensorFlow's
    # reductions, its fused batch norm) errs by 1.4e-6-4e-6 relative here; the row-then-column sums stay within
    # 1e-6 and 2e-6.
    x = (np.random.default_rng(0).normal(size=shape) * np.linspace(0.5, 3, shape[-1]) + 3).astype(np.float32)
    mean, variance = channel_moments(tf.constant(x))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean((0, 1, 2)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(variance, x64.var((0, 1, 2)), rtol=2e-6, atol=1e-7)


def test_batch_norm_train_compiles_with_xla():
    x = tf.random.stateless_normal([2, 7, 5, 6], seed=[3, 4]) * 2.0 + 1.0
    bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    bn.build(x.shape)
    bn.gamma.assign(np.linspace(0.5, 1.5, 6))

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = batch_norm_train(bn, x)
            loss = tf.reduce_sum(y * tf.sin(y))
        return y, tape.gradient(loss, [x, bn.gamma, bn.beta])

    y, grads = step(x)
    xla_y, xla_grads = tf.function(step, jit_compile=True)(x)
    np.testing.assert_allclose(xla_y, y, rtol=1e-5, atol=1e-5)
    for a, b in zip(xla_grads, grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_training_step_matches_torchvision_batch_norm_running_stats():
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None).train()
    model = backbone(depth=18, frozen_stages=-1, norm_eval=False)
    model.build((None, None, None, 3))
    copy_from_torchvision(reference, model)
    x = torch.randn(2, 3, 64, 64)
    expected = stage_outputs(reference, x)
    outs = model(tf.constant(x.permute(0, 2, 3, 1).numpy()), training=True)
    for ours, ref in zip(outs, expected):
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(model.bn1.moving_variance.numpy(), reference.bn1.running_var.numpy(), rtol=1e-4)
    np.testing.assert_allclose(model.stages[3][1].norms[1].moving_mean.numpy(),
                               reference.layer4[1].bn2.running_mean.numpy(), rtol=1e-4, atol=1e-6)


def test_group_norm_and_zero_eps_build_and_run():
    model = backbone(depth=18, frozen_stages=-1, norm_cfg={"type": "GN", "num_groups": 32})
    outs = model(tf.random.stateless_normal([1, 64, 64, 3], seed=[5, 6]), training=True)
    assert all(np.isfinite(o.numpy()).all() for o in outs)
    assert len(model.trainable_weights) == 60 and model.non_trainable_weights == []
    assert isinstance(layers_by_name(model)["layer2_0_downsample_1"], keras.layers.GroupNormalization)

    model = backbone(depth=18, norm_cfg={"eps": 0.0})
    outs = model(tf.random.stateless_normal([1, 64, 64, 3], seed=[5, 6]))
    assert layers_by_name(model)["bn1"].epsilon == 0.0
    assert all(np.isfinite(o.numpy()).all() for o in outs)


def test_get_config_round_trip():
    model = backbone(depth=18, frozen_stages=2, style="caffe", out_indices=(0, 3))
    clone = ResNet.from_config(model.get_config())
    assert clone.cfg == model.cfg and clone.name == "backbone"
    clone.build((None, None, None, 3))
    model.build((None, None, None, 3))
    assert [w.path for w in clone.trainable_weights] == [w.path for w in model.trainable_weights]


def test_mixed_bfloat16_policy():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = backbone(depth=18, num_stages=2, out_indices=(0, 1), frozen_stages=-1, norm_eval=False)
    finally:
        keras.config.set_dtype_policy(previous)
    outs = model(tf.random.stateless_normal([1, 64, 64, 3], seed=[7, 8]), training=True)
    assert [o.dtype for o in outs] == [tf.bfloat16, tf.bfloat16]
    assert model.conv1.kernel.dtype == "float32"
    assert all(np.isfinite(o.numpy().astype(np.float32)).all() for o in outs)


def test_forward_and_gradient_compile_with_xla():
    model = backbone(depth=18, num_stages=1, out_indices=(0,), frozen_stages=-1, norm_eval=False)
    images = tf.random.stateless_normal([1, 33, 47, 3], seed=[7, 8])

    def step(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(images, training=False)[0])
        return loss, tape.gradient(loss, model.trainable_weights)

    model.build(images.shape)
    loss, grads = step(images)
    xla_loss, xla_grads = tf.function(step, jit_compile=True)(images)
    np.testing.assert_allclose(xla_loss, loss, rtol=1e-4)
    for g, x in zip(grads, xla_grads):
        np.testing.assert_allclose(x, g, rtol=1e-3, atol=1e-3 * np.abs(g.numpy()).max())
