"""tfrcnn.training.trainer's two loops, in process on the toy of toy_distributed.py: Keras' fit (one device,
MirroredStrategy) and CustomLoop (MultiWorkerMirroredStrategy) drive the same `_Hooks`, so they checkpoint at the
same steps, log the same losses, stop at the same NaN and end with the same weights. The real multi-worker run
is tests/scripts/test_train_multiworker.py.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import toy_distributed as toy
from tfrcnn.config import Config
from tfrcnn.training import SGD, checkpoints, trainer
from tfrcnn.training.distributed import (OutOfSyncError, _compare_fingerprints, check_in_sync, is_chief,
                                         make_strategy, task_name)

# 48 samples in global batches of 8: 6 steps an "epoch"; 1 epoch, a checkpoint every 2 steps
CONFIG = Config.from_dict({"runner": {"max_epochs": 1}, "log_config": {"interval": 1},
                           "checkpoint_config": {"by_epoch": False, "interval": 2}})


def run(loop, model_dir, start=0, nan_at=None, strategy=None):
    """Trains the toy with `loop` ("fit" or "custom") from step `start`; returns (weights, printed step lines)."""
    strategy = strategy or make_strategy("one_device", ["/cpu:0"])
    x, y = toy.data()
    if nan_at is not None:
        y = y.copy()
        y[(nan_at - 1) * toy.GLOBAL_BATCH] = np.nan  # the first sample of step `nan_at`
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(toy.GLOBAL_BATCH).repeat()
    with strategy.scope():
        model = toy.toy_model_class()()
        model(tf.zeros((1, toy.FEATURES)))
        model.set_weights(toy.initial_weights())
        model.compile(optimizer=SGD(0.05, momentum=0.9))
        model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(start)
    schedule = trainer._Schedule(CONFIG, images_per_epoch=len(x), global_batch=toy.GLOBAL_BATCH)
    manager = tf.train.CheckpointManager(checkpoints.run_checkpoint(model, model.optimizer), str(model_dir),
                                         max_to_keep=10, checkpoint_name="ckpt")
    hooks = trainer._Hooks(model, manager, str(model_dir), tf.summary.create_noop_writer(), CONFIG, schedule, start,
                           evaluate_too=False, progress=True)
    if loop == "fit":
        trainer._fit(model, dataset, schedule, hooks)
    else:
        trainer._custom_loop(model, strategy, lambda input_context: dataset, schedule, hooks)
    return [w.numpy() for w in model.weights]


def steps_logged(out):
    """(step, loss) of each progress line."""
    lines = [line.split() for line in out.splitlines() if line.startswith("step ")]
    return [(int(words[1].split("/")[0]), words[words.index("loss") + 1]) for words in lines]


def saved(model_dir):
    return sorted(int(n[5:-6]) for n in os.listdir(model_dir) if n.startswith("ckpt-") and n.endswith(".index"))


@pytest.mark.parametrize("start", [0, 3])  # 3: resumed off the interval grid (the interval changed since)
def test_fit_and_custom_loop_checkpoint_log_and_train_alike(tmp_path, capsys, start):
    fit = run("fit", tmp_path / "fit", start)
    fit_out = capsys.readouterr().out
    custom = run("custom", tmp_path / "custom", start)
    custom_out = capsys.readouterr().out
    for a, b in zip(fit, custom, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    expected_steps = list(range(start + 1, 7))
    assert [s for s, _ in steps_logged(fit_out)] == expected_steps
    assert steps_logged(custom_out) == steps_logged(fit_out)  # the same global-batch losses, to the digit
    # a checkpoint at each interval boundary, the last at the last step
    assert saved(tmp_path / "fit") == saved(tmp_path / "custom") == [s for s in (2, 4, 6) if s > start]
    assert "1 replicas agree on the weights at step 6 (largest relative difference 0)" in custom_out


@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_nan_stops_with_the_step_and_the_last_good_checkpoint(tmp_path, loop):
    with pytest.raises(FloatingPointError, match=rf"the loss is nan at step 3; training stopped\. The last good "
                                                 rf"checkpoint is {tmp_path / 'ckpt-2'}$"):
        run(loop, tmp_path, nan_at=3)
    assert saved(tmp_path) == [2]


def test_mirrored_fit_runs_the_hooks(tmp_path, capsys):
    # int() of a mirrored Keras variable fails: the hooks read the step through convert_to_numpy
    run("fit", tmp_path, strategy=make_strategy("mirrored", ["/cpu:0"]))
    assert [s for s, _ in steps_logged(capsys.readouterr().out)] == [1, 2, 3, 4, 5, 6]
    assert saved(tmp_path) == [2, 4, 6]


def test_check_in_sync_returns_the_step():
    strategy = make_strategy("one_device", ["/cpu:0"])
    with strategy.scope():
        model = toy.toy_model_class()()
        model(tf.zeros((1, toy.FEATURES)))
        model.compile(optimizer=SGD(0.1, momentum=0.9))
        model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(7)
    assert check_in_sync(model, strategy) == (7, 0.0)


def test_in_sync_tolerates_rounding_not_another_checkpoint():
    names = ["a", "b"]
    # rows: (step, sum a, sum |a|, sum b, sum |b|) per replica
    same = np.array([[4, 1.0, 3.0, -2.0, 2.0], [4, 1.0, 3.0, -2.0, 2.0]])
    assert _compare_fingerprints(same, names, 1e-5) == (4, 0.0)
    rounding = same + [[0, 0, 0, 0, 0], [0, 3e-8, 0, 0, 0]]
    step, drift = _compare_fingerprints(rounding, names, 1e-5)
    assert step == 4 and drift == pytest.approx(1e-8)  # 3e-8 over a sum of magnitudes 3
    with pytest.raises(OutOfSyncError, match=r"different weights at step 4 \(1 variables, e.g. b\)"):
        _compare_fingerprints(same + [[0, 0, 0, 0, 0], [0, 0, 0, 0.1, 0.1]], names, 1e-5)
    with pytest.raises(OutOfSyncError, match=r"different steps \[4, 0\]: every worker must read the same model_dir"):
        _compare_fingerprints(np.array([[4, 1.0, 3.0, -2.0, 2.0], [0, 1.0, 3.0, -2.0, 2.0]]), names, 1e-5)


@pytest.mark.parametrize("tf_config, chief, name", [
    (None, True, ""),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True, "worker 0"),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False, "worker 1"),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, True, "chief 0"),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, False, "worker 0"),
])
def test_the_chief_is_worker_0_unless_the_cluster_names_one(monkeypatch, tf_config, chief, name):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert is_chief() is chief and task_name() == name


def _detector_steps(config, steps=2):
    """Builds the config's detector after configure_determinism and trains `steps` steps on one synthetic batch:
    (losses, weights)."""
    import tfrcnn
    from tfrcnn import structures
    from tfrcnn.training import build_optimizer
    trainer.configure_determinism(config)
    model = tfrcnn.build_model(config, build_size=(128, 128))
    model.compile(optimizer=build_optimizer(config, steps_per_epoch=100, model=model))
    rng = np.random.default_rng(0)
    y1, x1 = rng.uniform(0, 70, (2, 2, 3))
    h, w = rng.uniform(20, 50, (2, 2, 3))
    targets = {structures.GT_BOXES: np.stack([y1, x1, y1 + h, x1 + w], -1).astype(np.float32),
               structures.GT_CLASSES: np.array([[1, 2, 1], [2, 1, 0]], np.int32),
               structures.GT_MASKS: (rng.uniform(size=(2, 3, 28, 28)) > 0.5).astype(np.float32),
               structures.IMAGE_SIZE: np.full((2, 2), 128, np.int32)}
    images = rng.normal(size=(2, 128, 128, 3)).astype(np.float32)
    losses = [float(model.train_on_batch(images, targets, return_dict=True)["loss"]) for _ in range(steps)]
    return losses, [v.numpy() for v in model.weights]


def test_deterministic_runtime_repeats_a_detector_run_bit_for_bit(restores_op_determinism):
    # runtime.deterministic seeds the weights from runtime.seed and makes every op deterministic: the same
    # config trains the same weights twice in one process, RoIAlign's gradient included (TensorFlow's kernel).
    import tfrcnn
    from tfrcnn.ops import roi_align
    path = os.path.join(os.path.dirname(__file__), "..", "modeling", "configs", "mask_rcnn_r18_tiny.yaml")
    overrides = "runtime.deterministic=true,data.mask_crop_size=28,train_cfg.rcnn.sampler.num=32"
    config = tfrcnn.load_config(path, overrides)
    first_losses, first = _detector_steps(config)
    assert roi_align._kernel_gradient_is_exact()
    second_losses, second = _detector_steps(config)
    assert first_losses == second_losses
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    other_losses, _ = _detector_steps(tfrcnn.load_config(path, overrides + ",runtime.seed=1"), steps=1)
    assert other_losses[0] != first_losses[0]  # the seed does reach the weights' initialization
