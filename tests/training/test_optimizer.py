"""Tests of tfrcnn.training.optimizer: decay multipliers, coupled weight decay, clipping, PyTorch's SGD."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

from tfrcnn.config import GradClipCfg, ParamwiseCfg, load_config
from tfrcnn.training.optimizer import (SGD, AdamW, add_weight_decay, build_optimizer, clip_gradients, decay_multipliers,
                                       set_mixed_precision)
from tfrcnn.training.schedule import WarmupStepSchedule

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
MASK = os.path.join(CONFIGS, "mask_rcnn_r50_fpn_1x_coco.yaml")


class Block(keras.layers.Layer):
    """A nested layer, so that norm layers are found below the top level."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc = keras.layers.Dense(3, name="fc")
        self.ln = keras.layers.LayerNormalization(name="ln")

    def call(self, x):
        return self.ln(self.fc(x))


def small_model():
    """Conv2D(bias) + BatchNormalization + GroupNormalization + Block(Dense + LayerNorm) + Dense(no bias)."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GroupNormalization(groups=2, name="gn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = Block(name="block")(x)
    outputs = keras.layers.Dense(2, use_bias=False, name="head")(x)
    return keras.Model(inputs, outputs)


# --- decay_multipliers -----------------------------------------------------------------------------


def test_decay_multipliers_of_norm_bias_and_other_weights():
    model = small_model()
    names = [v.path for v in model.trainable_variables]
    assert names == ["conv/kernel", "conv/bias", "bn/gamma", "bn/beta", "gn/gamma", "gn/beta",
                     "block/fc/kernel", "block/fc/bias", "block/ln/gamma", "block/ln/beta", "head/kernel"]
    mults = decay_multipliers(model, ParamwiseCfg(norm_decay_mult=0.0, bias_decay_mult=0.5))
    # kernels 1; conv and fc biases bias_decay_mult; every norm weight (beta too) norm_decay_mult.
    assert mults == [1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.0, 0.0, 1.0]
    assert decay_multipliers(model) == [1.0] * 11  # no paramwise_cfg: MMDetection's default


def test_decay_multipliers_skip_frozen_layers():
    model = small_model()
    model.get_layer("bn").trainable = False
    mults = decay_multipliers(model, ParamwiseCfg(norm_decay_mult=0.0, bias_decay_mult=0.5))
    assert len(mults) == len(model.trainable_variables) == 9
    assert mults == [1.0, 0.5, 0.0, 0.0, 1.0, 0.5, 0.0, 0.0, 1.0]


# --- add_weight_decay / clip_gradients ---------------------------------------------------------------


def test_add_weight_decay_numbers():
    grads = [tf.constant([1.0, 2.0]), tf.constant([3.0]), None, tf.constant([4.0])]
    variables = [tf.Variable([10.0, -20.0]), tf.Variable([5.0]), tf.Variable([1.0]), keras.Variable([2.0])]
    out = add_weight_decay(grads, variables, [0.5, 0.0, 1.0, 1.0], weight_decay=0.1)
    # [1, 2] + 0.1 * 0.5 * [10, -20] = [1 + 0.5, 2 - 1] = [1.5, 1.0]
    np.testing.assert_allclose(out[0], [1.5, 1.0], rtol=1e-6)
    # multiplier 0: unchanged
    assert out[1] is grads[1]
    # no gradient stays no gradient
    assert out[2] is None
    # a Keras variable: 4 + 0.1 * 2 = 4.2
    np.testing.assert_allclose(out[3], [4.2], rtol=1e-6)


def test_clip_gradients_global_norm():
    grads = [tf.constant([3.0, 4.0]), tf.constant([[12.0]])]
    # global norm = sqrt(9 + 16 + 144) = 13; max_norm 6.5 scales every gradient by 6.5 / 13 = 0.5
    clipped, norm = clip_gradients(grads, GradClipCfg(max_norm=6.5))
    assert float(norm) == pytest.approx(13.0)
    np.testing.assert_allclose(clipped[0], [1.5, 2.0], rtol=1e-6)
    np.testing.assert_allclose(clipped[1], [[6.0]], rtol=1e-6)
    # below max_norm: unchanged; the norm is still reported
    clipped, norm = clip_gradients(grads, GradClipCfg(max_norm=20.0))
    assert float(norm) == pytest.approx(13.0)
    np.testing.assert_allclose(clipped[1], [[12.0]])
    # no clipping configured
    clipped, norm = clip_gradients(grads, None)
    assert norm is None and clipped[0] is grads[0]


def test_clip_gradients_refuses_other_norms():
    with pytest.raises(ValueError, match=r"optimizer_config\.grad_clip\.norm_type: only the L2 norm"):
        clip_gradients([tf.constant([1.0])], GradClipCfg(max_norm=1.0, norm_type=1.0))


# --- SGD: PyTorch's update -----------------------------------------------------------------------------


def test_one_and_two_sgd_steps_by_hand():
    # PyTorch: g' = g + wd * w; v = m * v + g'; w -= lr * v. w = 2, g = 0.5, wd = 0.1, m = 0.9.
    w = tf.Variable([2.0])
    lrs = iter([0.1, 0.2])
    opt = SGD(learning_rate=lambda: next(lrs), momentum=0.9, coupled_weight_decay=0.1)
    opt.apply([tf.constant([0.5])], [w])
    # step 1, lr 0.1: g' = 0.5 + 0.1 * 2 = 0.7; v = 0.7; w = 2 - 0.1 * 0.7 = 1.93
    np.testing.assert_allclose(w.numpy(), [1.93], rtol=1e-6)
    opt.apply([tf.constant([0.5])], [w])
    # step 2, lr 0.2: g' = 0.5 + 0.1 * 1.93 = 0.693; v = 0.9 * 0.7 + 0.693 = 1.323; w = 1.93 - 0.2 * 1.323 = 1.6654
    # (Keras' SGD keeps lr * v in its buffer: w = 1.93 - 0.9 * 0.07 - 0.2 * 0.693 = 1.7284)
    np.testing.assert_allclose(w.numpy(), [1.6654], rtol=1e-6)


def test_decay_multipliers_reach_the_update():
    w, b = tf.Variable([1.0]), tf.Variable([1.0])
    opt = SGD(learning_rate=1.0, momentum=0.0, coupled_weight_decay=0.5)
    opt.set_decay_multipliers([w, b], [1.0, 0.0])
    opt.apply([tf.constant([0.0]), tf.constant([0.0])], [w, b])
    # w: g' = 0 + 0.5 * 1 = 0.5; w = 1 - 0.5 = 0.5. b: multiplier 0, no decay: stays 1
    np.testing.assert_allclose([w.numpy()[0], b.numpy()[0]], [0.5, 1.0])


def test_clipping_uses_the_summed_gradient_before_the_decay():
    w = tf.Variable([3.0, 4.0])
    opt = SGD(learning_rate=1.0, momentum=0.0, coupled_weight_decay=0.1, grad_clip_norm=1.0)
    opt.apply([tf.constant([6.0, 8.0])], [w])
    # |g| = 10 -> g = [0.6, 0.8]; then + 0.1 * [3, 4] = [0.9, 1.2]; w = [3 - 0.9, 4 - 1.2]
    np.testing.assert_allclose(w.numpy(), [2.1, 2.8], rtol=1e-6)
    assert float(opt.grad_norm) == pytest.approx(10.0)


def test_matches_torch_sgd_with_warmup_decay_and_clipping():
    """Six steps on a quadratic, against torch.optim.SGD + clip_grad_norm_ with the same lr per step."""
    rng = np.random.default_rng(0)
    init = [rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=(2,)).astype(np.float32)]
    scale = [rng.uniform(0.5, 2.0, size=a.shape).astype(np.float32) for a in init]
    shift = [rng.normal(size=a.shape).astype(np.float32) for a in init]
    schedule = WarmupStepSchedule(0.1, steps_per_epoch=2, step_epochs=[2], warmup="linear", warmup_iters=3,
                                  warmup_ratio=0.1)
    wd, momentum, max_norm, mults = 0.05, 0.9, 1.5, [1.0, 0.0]

    tf_vars = [tf.Variable(a) for a in init]
    opt = SGD(schedule, momentum=momentum, coupled_weight_decay=wd, grad_clip_norm=max_norm)
    opt.set_decay_multipliers(tf_vars, mults)
    t_params = [torch.tensor(a, requires_grad=True) for a in init]
    t_opt = torch.optim.SGD([{"params": [p], "weight_decay": wd * m} for p, m in zip(t_params, mults)],
                            lr=0.1, momentum=momentum)
    for it in range(6):
        with tf.GradientTape() as tape:
            loss = sum(tf.reduce_sum(s * tf.square(v - c)) for v, s, c in zip(tf_vars, scale, shift))
        opt.apply(tape.gradient(loss, tf_vars), tf_vars)

        t_opt.zero_grad()
        t_loss = sum((torch.tensor(s) * (p - torch.tensor(c)) ** 2).sum() for p, s, c in zip(t_params, scale, shift))
        t_loss.backward()
        torch.nn.utils.clip_grad_norm_(t_params, max_norm)
        for group in t_opt.param_groups:
            group["lr"] = float(schedule(it))
        t_opt.step()
        for v, p in zip(tf_vars, t_params):
            np.testing.assert_allclose(v.numpy(), p.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=f"step {it}")


# --- AdamW: PyTorch's update ---------------------------------------------------------------------------


def test_one_adamw_step_by_hand():
    # PyTorch: w *= 1 - lr * wd; m = (1 - b1) g; v = (1 - b2) g^2; w -= lr / (1 - b1) * m / (sqrt(v / (1 - b2)) + eps)
    # w = 2, g = 0.5, lr = 0.1, wd = 0.5: w = 2 * 0.95 = 1.9; the Adam step of the first update is lr * g / |g|
    # (up to eps): 1.9 - 0.1 = 1.8.
    w = tf.Variable([2.0])
    opt = AdamW(learning_rate=0.1, betas=(0.9, 0.999), eps=1e-8, decoupled_weight_decay=0.5)
    opt.apply([tf.constant([0.5])], [w])
    np.testing.assert_allclose(w.numpy(), [1.8], rtol=1e-6)


def test_matches_torch_adamw_with_warmup_multipliers_and_clipping():
    """Six steps on a quadratic, against torch.optim.AdamW + clip_grad_norm_ with the same lr per step."""
    rng = np.random.default_rng(1)
    init = [rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=(2,)).astype(np.float32)]
    scale = [rng.uniform(0.5, 2.0, size=a.shape).astype(np.float32) for a in init]
    shift = [rng.normal(size=a.shape).astype(np.float32) for a in init]
    schedule = WarmupStepSchedule(0.05, steps_per_epoch=2, step_epochs=[2], warmup="linear", warmup_iters=3,
                                  warmup_ratio=0.1)
    wd, betas, eps, max_norm, mults = 0.05, (0.8, 0.95), 1e-6, 1.5, [1.0, 0.0]

    tf_vars = [tf.Variable(a) for a in init]
    opt = AdamW(schedule, betas=betas, eps=eps, decoupled_weight_decay=wd, grad_clip_norm=max_norm)
    opt.set_decay_multipliers(tf_vars, mults)
    t_params = [torch.tensor(a, requires_grad=True) for a in init]
    t_opt = torch.optim.AdamW([{"params": [p], "weight_decay": wd * m} for p, m in zip(t_params, mults)],
                              lr=0.05, betas=betas, eps=eps)
    for it in range(6):
        with tf.GradientTape() as tape:
            loss = sum(tf.reduce_sum(s * tf.square(v - c)) for v, s, c in zip(tf_vars, scale, shift))
        opt.apply(tape.gradient(loss, tf_vars), tf_vars)

        t_opt.zero_grad()
        t_loss = sum((torch.tensor(s) * (p - torch.tensor(c)) ** 2).sum() for p, s, c in zip(t_params, scale, shift))
        t_loss.backward()
        torch.nn.utils.clip_grad_norm_(t_params, max_norm)
        for group in t_opt.param_groups:
            group["lr"] = float(schedule(it))
        t_opt.step()
        for v, p in zip(tf_vars, t_params):
            np.testing.assert_allclose(v.numpy(), p.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=f"step {it}")


def test_adamw_config_round_trips_and_checkpoints(tmp_path):
    opt = AdamW(WarmupStepSchedule(1e-3, 10, [8, 11]), betas=(0.9, 0.99), eps=1e-7, decoupled_weight_decay=0.05,
                grad_clip_norm=35.0)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(again, AdamW) and isinstance(again._learning_rate, WarmupStepSchedule)
    assert (again.beta_1, again.beta_2, again.epsilon) == pytest.approx((0.9, 0.99, 1e-7))
    assert (again.decoupled_weight_decay, again.grad_clip_norm, again.weight_decay) == (0.05, 35.0, None)
    w = tf.Variable([1.0, 2.0])
    opt = AdamW(0.1, decoupled_weight_decay=0.1)
    opt.apply([tf.constant([1.0, -1.0])], [w])
    path = tf.train.Checkpoint(w=w, opt=opt).save(str(tmp_path / "ckpt"))
    w2 = tf.Variable([0.0, 0.0])
    opt2 = AdamW(0.1, decoupled_weight_decay=0.1)
    opt2.build([w2])
    tf.train.Checkpoint(w=w2, opt=opt2).restore(path).assert_consumed()
    np.testing.assert_allclose(opt2._velocities[0].numpy(), opt._velocities[0].numpy())
    assert int(opt2.iterations) == 1


def test_keras_decay_and_clipping_arguments_are_refused():
    for cls in (SGD, AdamW):
        for name in ("weight_decay", "clipnorm", "global_clipnorm", "clipvalue"):
            with pytest.raises(ValueError, match=f"{name} is Keras'"):
                cls(0.1, **{name: 1.0})


def test_sgd_config_round_trips_through_keras_serialization():
    opt = SGD(WarmupStepSchedule(0.02, 10, [8, 11]), momentum=0.9, coupled_weight_decay=1e-4, grad_clip_norm=35.0)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(again, SGD) and isinstance(again._learning_rate, WarmupStepSchedule)
    assert (again.momentum, again.coupled_weight_decay, again.grad_clip_norm) == (0.9, 1e-4, 35.0)
    assert again._learning_rate.get_config() == opt._learning_rate.get_config()
    assert again.weight_decay is None


def test_checkpoint_saves_and_restores_the_optimizer(tmp_path):
    w = tf.Variable([1.0, 2.0])
    opt = SGD(0.1, momentum=0.9, coupled_weight_decay=0.1, grad_clip_norm=1.0)
    opt.set_decay_multipliers([w], [0.5])
    opt.apply([tf.constant([1.0, 1.0])], [w])
    path = tf.train.Checkpoint(w=w, opt=opt).save(str(tmp_path / "ckpt"))
    w2 = tf.Variable([0.0, 0.0])
    opt2 = SGD(0.1, momentum=0.9, coupled_weight_decay=0.1, grad_clip_norm=1.0)
    opt2.build([w2])
    tf.train.Checkpoint(w=w2, opt=opt2).restore(path).assert_consumed()
    np.testing.assert_allclose(opt2.momentums[0].numpy(), opt.momentums[0].numpy())
    assert int(opt2.iterations) == 1 and float(opt2.grad_norm) == pytest.approx(np.sqrt(2.0))


def test_loss_scale_optimizer_clips_and_decays_unscaled_gradients():
    """mixed_float16: the LossScaleOptimizer divides by the scale before our clipping and decay run."""
    def step(wrap):
        w = tf.Variable([3.0, 4.0])
        opt = SGD(1.0, momentum=0.0, coupled_weight_decay=0.1, grad_clip_norm=1.0)
        if wrap:
            opt = keras.optimizers.LossScaleOptimizer(opt, initial_scale=1024.0)
        g = tf.constant([6.0, 8.0]) * (1024.0 if wrap else 1.0)
        opt.apply([g], [w])
        return w.numpy()

    np.testing.assert_allclose(step(True), step(False), rtol=1e-6)
    np.testing.assert_allclose(step(False), [2.1, 2.8], rtol=1e-6)


# --- build_optimizer / fit --------------------------------------------------------------------------


def test_build_optimizer_from_the_config():
    cfg = load_config(MASK)
    opt = build_optimizer(cfg, steps_per_epoch=100)
    assert isinstance(opt, keras.optimizers.SGD) and isinstance(opt, SGD)
    assert opt.weight_decay is None  # no Keras (decoupled) decay
    assert (opt.momentum, opt.coupled_weight_decay, opt.grad_clip_norm, opt.nesterov) == (0.9, 1e-4, None, False)
    assert opt._learning_rate.get_config()["step_epochs"] == [8, 11]
    clipped = build_optimizer(load_config(MASK, "optimizer_config.grad_clip={max_norm: 35, norm_type: 2}"), 100)
    assert clipped.grad_clip_norm == 35.0


def test_build_adamw_from_the_config():
    cfg = load_config(MASK, "optimizer={type: AdamW, lr: 0.0002, momentum: null, weight_decay: 0.05},"
                            "optimizer_config.grad_clip={max_norm: 10}")
    assert (cfg.optimizer.betas, cfg.optimizer.eps, cfg.optimizer.momentum) == ((0.9, 0.999), 1e-8, None)
    opt = build_optimizer(cfg, steps_per_epoch=100)
    assert isinstance(opt, AdamW) and opt.weight_decay is None
    assert (opt.decoupled_weight_decay, opt.grad_clip_norm, opt.beta_2) == (0.05, 10.0, 0.999)
    assert float(opt._learning_rate(10_000)) == pytest.approx(0.0002 * 0.01)  # after both steps of the 1x schedule


def test_optimizer_keys_of_the_other_type_are_refused():
    from tfrcnn.config import ConfigError
    # the 1x schedule's SGD momentum stays when only the type changes, as torch.optim.AdamW(momentum=...) fails
    with pytest.raises(ConfigError, match=r"optimizer\.momentum: is not an argument of AdamW.*_delete_"):
        load_config(MASK, "optimizer.type=AdamW")
    with pytest.raises(ConfigError, match=r"optimizer\.betas: is not an argument of SGD"):
        load_config(MASK, "optimizer.betas=[0.9,0.99]")
    with pytest.raises(ConfigError, match=r"optimizer\.betas: must be in \[0, 1\)"):
        load_config(MASK, "optimizer={type: AdamW, momentum: null, betas: [0.9, 1.0]}")


def test_build_optimizer_refusals():
    cfg = load_config(MASK, "optimizer.paramwise_cfg.norm_decay_mult=0")
    with pytest.raises(ValueError, match="pass the model"):
        build_optimizer(cfg, 100)
    cfg = load_config(MASK)
    cfg.optimizer_config.grad_clip = GradClipCfg(max_norm=35.0, norm_type=1.0)
    with pytest.raises(ValueError, match=r"optimizer_config\.grad_clip\.norm_type"):
        build_optimizer(cfg, 100)


def test_fit_with_multipliers_read_from_an_unbuilt_model():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = keras.layers.Dense(2, kernel_initializer="ones", bias_initializer="ones")
            self.bn = keras.layers.BatchNormalization()

        def call(self, x, training=False):
            return self.bn(self.fc(x), training=training)

    cfg = load_config(MASK, "optimizer.paramwise_cfg={norm_decay_mult: 0.0, bias_decay_mult: 0.25},"
                            "optimizer.weight_decay=0.5,lr_config.warmup=null")
    model = Net()
    opt = build_optimizer(cfg, steps_per_epoch=10, model=model)  # the model has no variables yet
    model.compile(optimizer=opt, loss="mse")
    # A zero loss gradient for the kernel and bias (targets equal the BN output, which is 0 here): only decay
    # moves them. fc(x = 0) = bias = 1 in both columns; BN of a constant batch is beta = 0.
    x, y = np.zeros((4, 3), np.float32), np.zeros((4, 2), np.float32)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert opt._decay_mults == (1.0, 0.25, 0.0, 0.0)  # fc kernel, fc bias, bn gamma, bn beta
    # kernel: 1 - 0.02 * 0.5 * 1 = 0.99; bias: 1 - 0.02 * 0.5 * 0.25 = 0.9975 (first step: v = g')
    np.testing.assert_allclose(model.fc.kernel.numpy(), np.full((3, 2), 0.99), rtol=1e-6)
    np.testing.assert_allclose(model.fc.bias.numpy(), [0.9975, 0.9975], rtol=1e-6)


@pytest.mark.parametrize("policy,jit", [("float32", True), ("mixed_bfloat16", False)])
def test_fit_under_xla_and_mixed_precision(policy, jit):
    try:
        set_mixed_precision(policy)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
        opt = SGD(WarmupStepSchedule(0.01, 2, [1]), momentum=0.9, coupled_weight_decay=1e-4, grad_clip_norm=1.0)
        model.compile(optimizer=opt, loss="mse", jit_compile=jit)
        x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
        history = model.fit(x, x[:, :1], batch_size=4, epochs=2, verbose=0).history["loss"]
        assert np.all(np.isfinite(history)) and int(opt.iterations) == 4 and float(opt.grad_norm) > 0
        assert model.layers[0].kernel.dtype == "float32"
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_set_mixed_precision():
    try:
        assert set_mixed_precision("mixed_bfloat16").name == "mixed_bfloat16"
        layer = keras.layers.Dense(2)
        layer.build((None, 3))
        assert layer.compute_dtype == "bfloat16" and layer.kernel.dtype == "float32"
        assert set_mixed_precision(None).name == "float32"
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
