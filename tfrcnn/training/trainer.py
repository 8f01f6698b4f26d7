"""The training job behind scripts/train.py: fit with checkpoints, resume, logs, and COCO evaluation.

A run lives in `model_dir`: `config.yaml` (the resolved config), `ckpt-<step>` checkpoints (the newest
`checkpoint_config.max_keep`), `logs/` (TensorBoard: losses and learning rate every `log_config.interval` steps,
evaluation metrics), `metrics.json` and `metrics.txt` (the last evaluation).

Steps, not epochs, are the unit of progress: an epoch is `steps_per_epoch` = images / global batch steps, and
Keras' `fit` runs one "epoch" per checkpoint interval, so that a run killed at any moment resumes from its last
checkpoint with the optimizer's step, momenta and learning rate where they were.
"""
import json
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tfrcnn.config import save_config
from tfrcnn.data import pipeline
from tfrcnn.data.tfrecord import coco_from_tfrecords
from tfrcnn.evaluation import CocoEvaluator, evaluate_model, format_table
from tfrcnn.training import checkpoints
from tfrcnn.training.distributed import make_strategy
from tfrcnn.training.optimizer import build_optimizer


_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


def _scalar(name, value):
    """tf.summary.scalar without the tensorboard package (only viewing the logs needs it): the same record."""
    tf.summary.write(name, tf.constant(float(value), tf.float32), metadata=_SCALAR_METADATA)


def evaluate(config, model, split="val", max_images=None, progress=True):
    """COCO metrics of `model` on a split: its ann_file as ground truth when it exists, else its TFRecords."""
    split_cfg = getattr(config.data, split)
    if split_cfg.ann_file and os.path.isfile(split_cfg.ann_file):
        gt = split_cfg.ann_file
    elif split_cfg.tfrecord:
        gt = coco_from_tfrecords(split_cfg.tfrecord, include_masks=config.model.with_mask)
    else:
        raise FileNotFoundError(f"data.{split}: neither ann_file {split_cfg.ann_file!r} nor a tfrecord pattern")
    category_ids, _ = pipeline.resolve_categories(config.data)
    evaluator = CocoEvaluator(gt, iou_types=config.evaluation.metric, category_ids=category_ids,
                              mask_threshold=config.test_cfg.rcnn.mask_thr_binary)
    predict = tf.function(lambda inputs: model(inputs, training=False))
    dataset = pipeline.build_dataset(config, split, training=False)
    return evaluate_model(predict, dataset, evaluator, max_images=max_images, progress=progress)


def write_metrics(metrics, model_dir, step=None):
    """metrics.json ({"bbox": {"AP": ..., "per_class": {...}}, ...}) and metrics.txt (the printed table)."""
    record = dict(metrics, step=step) if step is not None else dict(metrics)
    with open(os.path.join(model_dir, "metrics.json"), "w") as f:
        json.dump(record, f, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
    with open(os.path.join(model_dir, "metrics.txt"), "w") as f:
        f.write(format_table(metrics) + "\n")


def initialize_from(model, path):
    """Copies the variables a checkpoint holds (matched by path, e.g. only `backbone/...`) into `model`.

    Returns (copied, total). Raises ValueError when nothing matches or a matched shape differs.
    """
    reader = tf.train.load_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    copied = 0
    for v in model.variables:
        key = f"model/{v.path.split('/', 1)[-1]}/.ATTRIBUTES/VARIABLE_VALUE"
        if key in shapes:
            if list(shapes[key]) != list(v.shape):
                raise ValueError(f"{path}: {key} has shape {shapes[key]}, the model's {v.path} {list(v.shape)}")
            v.assign(reader.get_tensor(key))
            copied += 1
    if not copied:
        raise ValueError(f"{path}: no variable of the model is in this checkpoint (is it a tfrcnn checkpoint?)")
    return copied, len(model.variables)


class _Schedule:
    """Step arithmetic of a run."""

    def __init__(self, config, images_per_epoch, global_batch):
        self.steps_per_epoch = max(images_per_epoch // global_batch, 1)
        ckpt = config.checkpoint_config
        self.interval = ckpt.interval * self.steps_per_epoch if ckpt.by_epoch else ckpt.interval
        self.intervals = math.ceil(self.steps_per_epoch * config.runner.max_epochs / self.interval)
        self.total_steps = self.intervals * self.interval  # a last partial interval runs whole
        self.eval_every = config.evaluation.interval * self.steps_per_epoch


def train(config, model_dir, mode="train", init_checkpoint=None, progress=True):
    """Trains (and evaluates) the model of `config` in `model_dir`, resuming from its newest checkpoint.

    Args:
      config: the resolved tfrcnn Config (written to model_dir/config.yaml).
      model_dir: the run directory.
      mode: "train", "train_and_eval" (evaluate every `evaluation.interval` epochs and at the end) or "eval"
        (evaluate the newest checkpoint).
      init_checkpoint: weights to start from when model_dir has no checkpoint yet: a whole model or a part
        (e.g. a backbone), matched by variable path.
    Returns:
      the last evaluation's metrics, or {} when none ran.
    Raises FloatingPointError when the loss becomes NaN or inf (the last good checkpoint stays the newest).
    """
    if config.runtime.strategy == "multi_worker_mirrored":
        raise NotImplementedError("runtime.strategy multi_worker_mirrored: scripts/train.py does not drive it yet; "
                                  "use tfrcnn.training.train_loop (see docs/modeling.md)")
    os.makedirs(model_dir, exist_ok=True)
    save_config(config, os.path.join(model_dir, checkpoints.CONFIG_NAME))
    strategy = make_strategy(config.runtime.strategy)
    global_batch = config.data.samples_per_gpu * strategy.num_replicas_in_sync
    with strategy.scope():
        from tfrcnn.modeling import build_model
        model = build_model(config, build_size=config.data.padded_size())
    latest = checkpoints.latest_checkpoint(model_dir)
    if mode == "eval":
        if latest is None:
            raise FileNotFoundError(f"{model_dir}: no checkpoint to evaluate")
        checkpoints.run_checkpoint(model).read(latest).expect_partial().assert_existing_objects_matched()
        metrics = evaluate(config, model, progress=progress)
        write_metrics(metrics, model_dir)
        return metrics

    schedule = _Schedule(config, pipeline.count_images(config, "train"), global_batch)
    with strategy.scope():
        model.compile(optimizer=build_optimizer(config, schedule.steps_per_epoch, model=model))
        model.optimizer.build(model.trainable_variables)
    manager = tf.train.CheckpointManager(checkpoints.run_checkpoint(model, model.optimizer), model_dir,
                                        max_to_keep=config.checkpoint_config.max_keep, checkpoint_name="ckpt")
    if latest is not None:
        manager.checkpoint.restore(latest).assert_existing_objects_matched()
        _say(progress, f"resumed from {latest} at step {int(model.optimizer.iterations)}")
    elif init_checkpoint:
        copied, total = initialize_from(model, init_checkpoint)
        _say(progress, f"initialized {copied} of {total} variables from {init_checkpoint}")
    start = int(model.optimizer.iterations)
    metrics = {}
    if start < schedule.total_steps:
        dataset = pipeline.build_dataset(config, "train", training=True, batch_size=global_batch).repeat()
        writer = tf.summary.create_file_writer(os.path.join(model_dir, "logs"))
        callbacks = [_StopOnNonFinite(manager), _Checkpoint(manager),
                     _Log(writer, config.log_config.interval, schedule.total_steps, start, progress)]
        if mode == "train_and_eval":
            callbacks.append(_Evaluate(config, model_dir, schedule.eval_every, writer, progress))
        model.fit(dataset, epochs=schedule.intervals, steps_per_epoch=schedule.interval,
                  initial_epoch=start // schedule.interval, callbacks=callbacks, verbose=0)
        metrics = callbacks[-1].metrics if mode == "train_and_eval" else {}
    if mode == "train_and_eval" and not metrics:
        metrics = evaluate(config, model, progress=progress)
        write_metrics(metrics, model_dir, int(model.optimizer.iterations))
    return metrics


def _say(enabled, text):
    if enabled:
        print(text, flush=True)


class _StopOnNonFinite(keras.callbacks.Callback):
    """Raises at the first NaN or inf loss, before that interval's checkpoint is written."""

    def __init__(self, manager):
        super().__init__()
        self.manager = manager

    def on_train_batch_end(self, batch, logs=None):
        loss = float(logs["loss"])
        if not np.isfinite(loss):
            step = int(self.model.optimizer.iterations)
            raise FloatingPointError(f"the loss is {loss} at step {step}; training stopped. The last good "
                                     f"checkpoint is {self.manager.latest_checkpoint or '(none yet)'}")


class _Checkpoint(keras.callbacks.Callback):
    """A checkpoint at the end of every interval (a Keras epoch), numbered by the global step."""

    def __init__(self, manager):
        super().__init__()
        self.manager = manager

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(checkpoint_number=int(self.model.optimizer.iterations))


class _Log(keras.callbacks.Callback):
    """Losses and learning rate to TensorBoard and a progress line every `interval` steps, with the ETA."""

    def __init__(self, writer, interval, total, start, progress):
        super().__init__()
        self.writer, self.interval, self.total, self.start, self.progress = writer, interval, total, start, progress
        self.began = time.time()
        self.tty = sys.stdout.isatty()

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        if step % self.interval and step != self.total:
            return
        lr = float(self.model.optimizer.learning_rate)
        with self.writer.as_default(step=step):
            for name, value in logs.items():
                _scalar(f"train/{name}", value)
            _scalar("train/learning_rate", lr)
        if self.progress:
            rate = (step - self.start) / max(time.time() - self.began, 1e-9)
            eta = (self.total - step) / max(rate, 1e-9)
            losses = " ".join(f"{k} {float(v):.3f}" for k, v in logs.items())
            line = (f"step {step}/{self.total} ({100 * step / self.total:.0f}%) {losses} lr {lr:.4g} "
                    f"{rate:.2f} steps/s eta {int(eta) // 60}m{int(eta) % 60:02d}s")
            print(("\r" + line) if self.tty else line, end="" if self.tty and step != self.total else "\n",
                  flush=True)


class _Evaluate(keras.callbacks.Callback):
    """COCO evaluation every `every` steps (an epoch boundary) and at the end of training."""

    def __init__(self, config, model_dir, every, writer, progress):
        super().__init__()
        self.config, self.model_dir, self.every, self.writer, self.progress = config, model_dir, every, writer, progress
        self.metrics = {}

    def _run(self, step):
        self.metrics = evaluate(self.config, self.model, progress=self.progress)
        write_metrics(self.metrics, self.model_dir, step)
        with self.writer.as_default(step=step):
            for iou_type, values in self.metrics.items():
                for name in ("AP", "AP50", "AP75"):
                    _scalar(f"eval/{iou_type}_{name}", values[name])
        _say(self.progress, format_table(self.metrics))

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations)
        if step % self.every == 0:
            self._run(step)

    def on_train_end(self, logs=None):
        step = int(self.model.optimizer.iterations)
        if step % self.every:
            self._run(step)
