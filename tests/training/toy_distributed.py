"""A toy model trained by tfrcnn.training under a strategy; run as a script in a subprocess by test_distributed.

    python toy_distributed.py single OUT.npz
    python toy_distributed.py mirrored OUT.npz            # MirroredStrategy over 2 logical CPU devices
    python toy_distributed.py worker OUT.npz              # MultiWorkerMirroredStrategy; TF_CONFIG names the cluster

Each writes the final weights (w0, w1, ...) and the per-step logged losses (`loss`) to OUT.npz.
The logical devices and TF_CONFIG must be in place before TensorFlow runs its first op, which is why every
strategy but the default one runs in a fresh process.
"""
import os
import sys

import numpy as np

STEPS = 6
GLOBAL_BATCH = 8
FEATURES = 5
WEIGHT_DECAY = 0.01
MAX_NORM = 0.5  # small enough that the toy's gradients are clipped


def data():
    """STEPS global batches: x float32 [STEPS * GLOBAL_BATCH, FEATURES], y [.., 1]."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * GLOBAL_BATCH, FEATURES)).astype(np.float32)
    y = (x @ rng.normal(size=(FEATURES, 1)) + 0.5).astype(np.float32)
    return x, y


def initial_weights():
    rng = np.random.default_rng(1)
    return [rng.normal(scale=0.5, size=(FEATURES, 4)).astype(np.float32), np.full((4,), 0.1, np.float32),
            rng.normal(scale=0.5, size=(4, 1)).astype(np.float32), np.full((1,), -0.2, np.float32)]


def toy_model_class():
    import keras
    import tensorflow as tf

    class Toy(keras.Model):
        """Dense-tanh-Dense; squared error summed and divided by the GLOBAL batch, as the detectors do."""

        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(4, activation="tanh", name="hidden")
            self.out = keras.layers.Dense(1, name="out")

        def call(self, x):
            return self.out(self.hidden(x))

        def train_step(self, batch):
            x, y = batch
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            global_batch = tf.cast(tf.shape(x)[0] * replicas, tf.float32)
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(self(x, training=True) - y)) / global_batch
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply(grads, self.trainable_variables)
            # Each replica holds its share; the sum over replicas is the global batch's loss.
            total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, loss)
            return {"loss": total, "grad_norm": self.optimizer.grad_norm.value}

    return Toy


def train(strategy):
    """Trains the toy for STEPS steps under `strategy`; returns (weights, per-step logs)."""
    import tensorflow as tf

    from tfrcnn.config import ParamwiseCfg
    from tfrcnn.training import SGD, WarmupStepSchedule, train_loop

    x, y = data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    with strategy.scope():
        model = toy_model_class()()
        model(tf.zeros((1, FEATURES)))
        model.set_weights(initial_weights())
        # The lr changes every step (warmup) and at a step boundary: PyTorch's momentum differs from Keras' there.
        schedule = WarmupStepSchedule(0.1, steps_per_epoch=2, step_epochs=[2], warmup="linear", warmup_iters=3,
                                      warmup_ratio=0.1)
        optimizer = SGD(schedule, momentum=0.9, coupled_weight_decay=WEIGHT_DECAY, grad_clip_norm=MAX_NORM)
        optimizer.set_decay_multipliers(model=model, paramwise_cfg=ParamwiseCfg(bias_decay_mult=0.0))
        model.compile(optimizer=optimizer)
    logs = train_loop(model, dataset, strategy, STEPS)
    return [v.numpy() for v in model.weights], logs


def save(path, weights, logs):
    np.savez(path, loss=np.array([l["loss"] for l in logs]), grad_norm=np.array([l["grad_norm"] for l in logs]),
             **{f"w{i}": w for i, w in enumerate(weights)})


def main(mode, out):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from tfrcnn.training import make_strategy

    if mode == "single":
        strategy = make_strategy("one_device", ["/cpu:0"])
    elif mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = make_strategy("mirrored", ["/cpu:0", "/cpu:1"])
    elif mode == "worker":
        strategy = make_strategy("multi_worker_mirrored")
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    assert strategy.num_replicas_in_sync == (1 if mode == "single" else 2), strategy.num_replicas_in_sync
    save(out, *train(strategy))


if __name__ == "__main__":
    main(*sys.argv[1:])
