"""Tests of tfrcnn.training.distributed: the custom loop on one device, MirroredStrategy over two logical CPUs,
and MultiWorkerMirroredStrategy over two worker processes on 127.0.0.1, against the single-device run.

The toy (tests/training/toy_distributed.py) trains with a warmup lr, coupled weight decay with a bias
multiplier 0, and gradient clipping that is active: the update matches one device only if the decay and the
clipping apply once, to the gradient summed over the replicas.
"""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import toy_distributed as toy
from tfrcnn.training import SGD, CustomLoop, make_strategy, train_loop
from localhost import free_ports

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 150  # seconds per subprocess; a hung collective fails the test instead of the run


@pytest.fixture(scope="module")
def single():
    """The reference: the toy on one device, in this process."""
    weights, logs = toy.train(make_strategy("one_device", ["/cpu:0"]))
    return weights, np.array([l["loss"] for l in logs])


def env(**extra):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    e.pop("TF_CONFIG", None)
    e.update(extra)
    return e


def load(path):
    out = np.load(path)
    return [out[f"w{i}"] for i in range(4)], out["loss"]


def assert_same_run(got, expected):
    for a, b in zip(got[0], expected[0], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-5)


def test_logged_loss_is_the_global_batch_loss(single):
    # Step 0 logs the loss of the initial weights on the first global batch: sum of squares / 8.
    w0, b0, w1, b1 = toy.initial_weights()
    x, y = toy.data()
    x, y = x[:toy.GLOBAL_BATCH], y[:toy.GLOBAL_BATCH]
    expected = np.sum((np.tanh(x @ w0 + b0) @ w1 + b1 - y) ** 2) / toy.GLOBAL_BATCH
    assert single[1][0] == pytest.approx(expected, rel=1e-5)
    assert np.all(np.isfinite(single[1])) and not np.allclose(single[0][0], w0)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The mirrored run and the two workers, started together: most of their time is TensorFlow's start-up."""
    out = tmp_path_factory.mktemp("distributed")
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    runs = {"mirrored": ("mirrored", env())}
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        runs[f"w{i}"] = ("worker", env(TF_CONFIG=tf_config))
    procs = {name: subprocess.Popen([sys.executable, "toy_distributed.py", mode, str(out / f"{name}.npz")], cwd=HERE,
                                    env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, (mode, e) in runs.items()}
    yield out, procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()


def finished(launched, name):
    """The run's weights and losses once its process exits successfully (bounded wait)."""
    out, procs = launched
    try:
        output, _ = procs[name].communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        procs[name].kill()
        raise
    assert procs[name].returncode == 0, f"{name} failed:\n{output[-3000:]}"
    return load(out / f"{name}.npz")


def test_mirrored_two_logical_cpus_match_one_device(single, launched):
    assert_same_run(finished(launched, "mirrored"), single)


def test_multi_worker_mirrored_two_processes_match_one_device(single, launched):
    w0, w1 = finished(launched, "w0"), finished(launched, "w1")
    for a, b in zip(w0[0] + [w0[1]], w1[0] + [w1[1]]):
        np.testing.assert_array_equal(a, b)  # the two workers hold one model
    assert_same_run(w0, single)


# --- in-process checks of the loop ------------------------------------------------------------------------


def test_loop_builds_an_unbuilt_model_and_reports_each_step():
    model = toy.toy_model_class()()
    model.compile(optimizer=SGD(0.05, momentum=0.9))
    x, y = toy.data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(toy.GLOBAL_BATCH)
    seen = []
    history = train_loop(model, dataset, tf.distribute.get_strategy(), 3, on_step=lambda i, logs: seen.append(i))
    assert model.built and model.optimizer.built and int(model.optimizer.iterations) == 3
    assert seen == [0, 1, 2] and len(history) == 3
    assert set(history[0]) == {"loss", "grad_norm"} and all(isinstance(v, float) for v in history[0].values())
    # The loop goes on from where it stopped, on a dataset_fn as well (per-replica batches).
    loop = CustomLoop(model, tf.distribute.get_strategy())
    loop.run(lambda ctx: dataset, 2)
    assert int(model.optimizer.iterations) == 5


def test_each_run_resets_the_metrics_as_fit_does_each_epoch():
    class Counter(keras.Model):
        """Logs a Mean metric of x: the running mean since the metrics were last reset."""

        def __init__(self):
            super().__init__()
            self.w = self.add_weight(shape=(), initializer="zeros")
            self.mean = keras.metrics.Mean(name="mean")
            self.built = True  # its one weight exists already

        def train_step(self, x):
            with tf.GradientTape() as tape:
                loss = self.w * tf.reduce_sum(x)
            self.optimizer.apply(tape.gradient(loss, [self.w]), [self.w])
            self.mean.update_state(tf.reduce_mean(x))
            return {"mean": self.mean.result()}

    model = Counter()
    model.compile(optimizer=SGD(0.1))
    dataset = tf.data.Dataset.from_tensor_slices(np.arange(1.0, 7.0, dtype=np.float32)).batch(1)
    # batches 1, 2, 3: running means 1, 1.5, 2
    assert [l["mean"] for l in train_loop(model, dataset, tf.distribute.get_strategy(), 3)] == [1.0, 1.5, 2.0]
    # a new run starts a new iterator (batch 1 again) and new means: 1, then (1 + 2) / 2
    assert [l["mean"] for l in train_loop(model, dataset, tf.distribute.get_strategy(), 2)] == [1.0, 1.5]


def test_loop_refuses_a_model_or_optimizer_made_outside_the_scope():
    strategy = make_strategy("one_device", ["/cpu:0"])
    model = toy.toy_model_class()()
    with pytest.raises(ValueError, match="compile the model"):
        CustomLoop(model, strategy)
    model.compile(optimizer=SGD(0.1))
    with pytest.raises(ValueError, match="the model was not created inside strategy.scope"):
        CustomLoop(model, strategy)
    with strategy.scope():
        model = toy.toy_model_class()()
    model.compile(optimizer=SGD(0.1))
    with pytest.raises(ValueError, match="the optimizer was not created inside strategy.scope"):
        CustomLoop(model, strategy)


def test_make_strategy():
    assert isinstance(make_strategy("one_device", ["/cpu:0"]), tf.distribute.OneDeviceStrategy)
    # without devices: the default strategy (first GPU, else CPU), which steps twice as fast on CPU
    assert make_strategy("one_device") is tf.distribute.get_strategy()
    assert make_strategy("mirrored", ["/cpu:0"]).num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="devices come from TF_CONFIG"):
        make_strategy("multi_worker_mirrored", ["/cpu:0"])
    with pytest.raises(ValueError, match="strategy must be one of"):
        make_strategy("tpu")
    assert keras.mixed_precision.dtype_policy().name == "float32"
