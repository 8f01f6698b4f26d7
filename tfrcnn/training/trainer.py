"""The training job behind scripts/train.py: fit with checkpoints, resume, logs, and COCO evaluation.

A run lives in `model_dir`: `config.yaml` (the resolved config), `ckpt-<step>` checkpoints (the newest
`checkpoint_config.max_keep`), `logs/` (TensorBoard: losses and learning rate every `log_config.interval` steps;
at each evaluation its metrics, the per-class APs and the first val images drawn with their detections),
`metrics.json` and `metrics.txt` (the last evaluation).

Steps, not epochs, are the unit of progress: an epoch is `steps_per_epoch` = images / global batch steps, and
training runs one interval (`checkpoint_config.interval`) at a time, so that a run killed at any moment resumes
from its last checkpoint with the optimizer's step, momenta and learning rate where they were. A run without a
checkpoint of its own starts as MMDetection's do: from `resume_from` (another run's checkpoint, continued), else
from the `model.pretrained` backbone and then the `load_from` weights (`_starting_point`).

Two loops run the model's `train_step`: Keras' `fit` (one "epoch" per interval) on one device and under
MirroredStrategy, and `tfrcnn.training.CustomLoop` under MultiWorkerMirroredStrategy, where `fit` fails
(keras-team/keras#20585). Both call the same `_Hooks` for what happens between steps: the NaN stop, the
TensorBoard scalars and progress line, the checkpoints and the evaluations. Under MultiWorkerMirroredStrategy
every worker runs this same function; only the chief writes the config, the checkpoints, the summaries and the
metrics, and evaluates (see docs/training.md).
"""
import json
import math
import os
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tfrcnn.config import CONFIG_NAME, save_config
from tfrcnn.data import pipeline
from tfrcnn.data.coco import resolve_categories
from tfrcnn.data.tfrecord import coco_from_tfrecords
from tfrcnn.evaluation import CocoEvaluator, evaluate_model, format_table
from tfrcnn.inference import Postprocessor
from tfrcnn.training import checkpoints
from tfrcnn.training.distributed import CustomLoop, check_in_sync, is_chief, make_strategy, task_name
from tfrcnn.training.optimizer import build_optimizer


_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
_IMAGE_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="images"))
SUMMARY_IMAGES = 4  # val images drawn with their detections to TensorBoard at each evaluation


def _scalar(name, value):
    """tf.summary.scalar without the tensorboard package (only viewing the logs needs it): the same record."""
    tf.summary.write(name, tf.constant(float(value), tf.float32), metadata=_SCALAR_METADATA)


def _image(name, image):
    """tf.summary.image of one uint8 [H, W, 3] image, without the tensorboard package: the same record (the images
    plugin reads a string tensor [width, height, PNG])."""
    png = tf.io.encode_png(image)
    tensor = tf.stack([tf.as_string(tf.shape(image)[1]), tf.as_string(tf.shape(image)[0]), png])
    tf.summary.write(name, tensor, metadata=_IMAGE_METADATA)


def coco_evaluator(config, split="val"):
    """A CocoEvaluator for a split: its ann_file as ground truth when it exists, else its TFRecords."""
    split_cfg = getattr(config.data, split)
    if split_cfg.ann_file and os.path.isfile(split_cfg.ann_file):
        gt = split_cfg.ann_file
    elif split_cfg.tfrecord:
        gt = coco_from_tfrecords(split_cfg.tfrecord, include_masks=config.model.with_mask)
    else:
        raise FileNotFoundError(f"data.{split}: neither ann_file {split_cfg.ann_file!r} nor a tfrecord pattern")
    post = Postprocessor.from_config(config)
    return CocoEvaluator(gt, iou_types=config.evaluation.metric, category_ids=post.category_ids,
                         mask_paste_mode=post.mask_paste, mask_threshold=post.mask_threshold)


def evaluate(config, model, split="val", max_images=None, progress=True, evaluator=None):
    """COCO metrics of `model` on a split, through `evaluator` (default: `coco_evaluator(config, split)`; pass one
    to keep its detections, `evaluator.results()`)."""
    evaluator = evaluator or coco_evaluator(config, split)
    # reduce_retracing: with data.test_padding 'size_divisor' batches differ in size; one trace serves them all.
    predict = tf.function(lambda inputs: model(inputs, training=False), reduce_retracing=True)
    dataset = pipeline.build_dataset(config, split, training=False)
    with pipeline.input_errors(getattr(config.data, split).tfrecord):
        return evaluate_model(predict, dataset, evaluator, max_images=max_images, progress=progress)


def draw_first_images(config, evaluator, count, split="val", score_threshold=0.5):
    """uint8 [H, W, 3] drawings of the split's first `count` images (file order) with the detections of
    `evaluator` (after `evaluate`) scoring at least `score_threshold`: [(image id, drawing)]."""
    from tfrcnn.visualize import draw_records

    ids, names = resolve_categories(config.data)
    by_image = {}
    for record in evaluator.results():
        by_image.setdefault(record["image_id"], []).append(record)
    drawings = []
    for ex in pipeline.read_examples(config, split).take(count):
        image_id = int(ex["source_id"].numpy())
        drawings.append((image_id, draw_records(ex["image"].numpy(), by_image.get(image_id, []),
                                                dict(zip(ids, names)), score_threshold)))
    return drawings


def write_metrics(metrics, model_dir, step=None):
    """metrics.json ({"bbox": {"AP": ..., "per_class": {...}}, ...}) and metrics.txt (the printed table)."""
    record = dict(metrics, step=step) if step is not None else dict(metrics)
    with open(os.path.join(model_dir, "metrics.json"), "w") as f:
        json.dump(record, f, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
    with open(os.path.join(model_dir, "metrics.txt"), "w") as f:
        f.write(format_table(metrics) + "\n")


@checkpoints.reads_checkpoint
def initialize_from(model, path, part=None):
    """Copies the variables a checkpoint holds (matched by path, e.g. only `backbone/...`) into `model`.

    A variable whose shape differs is left as initialized and reported, as Detectron2 and MMDetection do when
    fine-tuning a COCO model on another number of classes (the class-sized predictor layers).
    `part`: a sublayer of `model` (e.g. `model.backbone`, for `model.pretrained`): only its variables are read.
    Returns (copied, total, skipped): total counts the variables of `part` (or the model), skipped lists
    "<path>: checkpoint <shape>, model <shape>". Raises ValueError when nothing is copied.
    """
    reader = tf.train.load_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    variables = (part or model).variables
    copied, skipped = 0, []
    for v in variables:
        # tf.train.Checkpoint escapes a name's '.' as '..' and '/' as '.S' in its keys.
        name = v.path.split("/", 1)[-1].replace(".", "..").replace("/", ".S")
        key = f"model/{name}/.ATTRIBUTES/VARIABLE_VALUE"
        if key in shapes:
            if list(shapes[key]) != list(v.shape):
                skipped.append(f"{v.path}: checkpoint {list(shapes[key])}, model {list(v.shape)}")
                continue
            v.assign(reader.get_tensor(key))
            copied += 1
    if not copied:
        detail = f" ({len(skipped)} differ in shape: {'; '.join(skipped)})" if skipped else ""
        raise ValueError(f"{path}: no variable of the {'model' if part is None else part.name} is in this "
                         f"checkpoint (is it a tfrcnn checkpoint?){detail}")
    return copied, len(variables), skipped


def _checkpoint(path, key):
    """The checkpoint prefix `path` names (see checkpoints.find_checkpoint); else FileNotFoundError naming `key`."""
    found = checkpoints.find_checkpoint(path)
    if found is None:
        hint = (": a PyTorch file; convert it first with scripts/convert_checkpoint.py"
                if path.endswith((".pth", ".pt")) else f" (neither {path}.index nor a directory holding a checkpoint)")
        raise FileNotFoundError(f"{key} {path!r}: no such tfrcnn checkpoint{hint}")
    return found


def _starting_point(config, model_dir, init_checkpoint):
    """What initializes the run's model, found and checked before anything is built (a missing file is one error).

    MMDetection's order: model_dir's newest checkpoint whatever the config says (a rerun after a crash goes on
    from its own work, not back to resume_from); else `resume_from` (weights, optimizer state and step; it
    restores every weight, so model.pretrained and load_from are not read, and the progress line says so); else
    `model.pretrained` into the backbone, then `load_from` (weights only, matched by variable path, over the
    pretrained ones), whose place `init_checkpoint` takes when given.
    Returns (resume, pretrained, load, note): the checkpoint prefix to restore whole or None; a
    `tfrcnn.convert.pretrained.Pretrained` or None; (prefix, its key) of the weights to copy or None; what the
    progress line adds to "resumed from ...".
    """
    from tfrcnn.convert.pretrained import resolve_pretrained

    latest = checkpoints.latest_checkpoint(model_dir)
    if latest is not None:
        return latest, None, None, ""
    load_key, load = ("--init_checkpoint", init_checkpoint) if init_checkpoint else ("load_from", config.load_from)
    if config.resume_from:
        resume = _checkpoint(config.resume_from, "resume_from")
        if not any(name.startswith("optimizer/") for name, _ in tf.train.list_variables(resume)):
            raise ValueError(f"resume_from {config.resume_from!r}: {resume} holds no optimizer state (not a training "
                             "run's checkpoint); give it as load_from to start from its weights")
        skipped = [f"{load_key} {load}"] * bool(load) + [f"model.pretrained {config.model.pretrained}"] * bool(
            config.model.pretrained)
        note = f" (resume_from; {' and '.join(skipped)} not read)" if skipped else " (resume_from)"
        return resume, None, None, note
    return None, resolve_pretrained(config), load and (_checkpoint(load, load_key), load_key), ""


class _Schedule:
    """Step arithmetic of a run."""

    def __init__(self, config, images_per_epoch, global_batch):
        self.steps_per_epoch = max(images_per_epoch // global_batch, 1)
        ckpt = config.checkpoint_config
        self.interval = ckpt.interval * self.steps_per_epoch if ckpt.by_epoch else ckpt.interval
        self.intervals = math.ceil(self.steps_per_epoch * config.runner.max_epochs / self.interval)
        self.total_steps = self.intervals * self.interval  # a last partial interval runs whole
        self.eval_every = config.evaluation.interval * self.steps_per_epoch


def configure_determinism(config):
    """Applies `runtime.deterministic` to this process; call it before the model is built.

    With it true: Keras' global seed from `runtime.seed` (Python, NumPy, TensorFlow and the weights' initializers)
    and `tf.config.experimental.enable_op_determinism()`, which holds for the rest of the process (TensorFlow cannot
    switch it off publicly) and makes unseeded random ops and `tf.timestamp` errors. Without it, nothing changes.
    """
    if config.runtime.deterministic:
        keras.utils.set_random_seed(config.runtime.seed)
        tf.config.experimental.enable_op_determinism()


def train(config, model_dir, mode="train", init_checkpoint=None, progress=True):
    """Trains (and evaluates) the model of `config` in `model_dir`, resuming from its newest checkpoint.

    Args:
      config: the resolved tfrcnn Config (written to model_dir/config.yaml).
      model_dir: the run directory. Under multi_worker_mirrored every worker must see the same one (one host, a
        filesystem they share, such as NFS): each restores the newest checkpoint there itself.
      mode: "train", "train_and_eval" (evaluate every `evaluation.interval` epochs and at the end) or "eval"
        (evaluate the newest checkpoint).
      init_checkpoint: weights to start from when model_dir has no checkpoint yet: a whole model or a part
        (e.g. a backbone), matched by variable path. It takes the place of the config's `load_from`; the
        initialization order (model_dir's checkpoint, resume_from, model.pretrained, load_from) is
        `_starting_point`'s, and its files are checked before anything is built.
      progress: print the progress lines (only the chief prints them under multi_worker_mirrored).
    Returns:
      the last evaluation's metrics, or {} when none ran (and on every worker but the chief).
    Raises FloatingPointError when the loss becomes NaN or inf (the last good checkpoint stays the newest), and
    distributed.OutOfSyncError when the workers of a multi-worker run do not hold the same step and weights.
    """
    if mode == "eval":
        return _evaluate_latest(config, model_dir, progress)
    resume, pretrained, load, note = _starting_point(config, model_dir, init_checkpoint)  # before model_dir is written
    configure_determinism(config)
    strategy = make_strategy(config.runtime.strategy)
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    chief = is_chief(strategy)
    if progress and not chief:
        print(f"{task_name(strategy)}: training; the chief writes the checkpoints, logs and metrics to {model_dir}",
              flush=True)
    progress = progress and chief
    global_batch = config.data.samples_per_gpu * strategy.num_replicas_in_sync
    # TFRecords without the masks a mask head needs, or an empty training set, stop here, before model_dir is
    # written; after make_strategy, since reading a record starts TensorFlow's context, which
    # MultiWorkerMirroredStrategy must configure first.
    pipeline.check_splits(config, ["train", "val"] if mode == "train_and_eval" else ["train"])
    schedule = _Schedule(config, pipeline.count_training_images(config, global_batch), global_batch)
    if chief:
        os.makedirs(model_dir, exist_ok=True)
        save_config(config, os.path.join(model_dir, CONFIG_NAME))
    with strategy.scope():
        from tfrcnn.modeling import build_model
        model = build_model(config, build_size=config.data.padded_size())
        model.compile(optimizer=build_optimizer(config, schedule.steps_per_epoch, model=model))
        model.optimizer.build(model.trainable_variables)
    # Every worker saves, as TensorFlow's MultiWorkerMirroredStrategy guide has it (saving a sync-on-read
    # variable is a collective, though tfrcnn's models hold none); all but the chief write to a directory of
    # their own, deleted at the end.
    save_dir = model_dir if chief else tempfile.mkdtemp(prefix=f"tfrcnn-{task_name(strategy).replace(' ', '')}-")
    try:
        manager = tf.train.CheckpointManager(checkpoints.run_checkpoint(model, model.optimizer), save_dir,
                                            max_to_keep=config.checkpoint_config.max_keep, checkpoint_name="ckpt")
        if resume is not None:
            checkpoints.restore(manager.checkpoint, resume)  # CheckpointError naming a damaged file
            _say(progress, f"resumed from {resume} at step {_step(model)}{note}")
        else:
            _initialize(model, pretrained, load, progress)
        if multi_worker:
            check_in_sync(model, strategy)
            cluster = strategy.cluster_resolver.cluster_spec().as_dict()
            workers = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker")) or 1
            _say(progress, f"{strategy.num_replicas_in_sync} replicas on {workers} workers, global batch "
                           f"{global_batch}; this is the chief: it writes {model_dir}")
        start = _step(model)
        metrics = {}
        if start < schedule.total_steps:
            writer = (tf.summary.create_file_writer(os.path.join(model_dir, "logs")) if chief
                      else tf.summary.create_noop_writer())
            hooks = _Hooks(model, manager, model_dir, writer, config, schedule, start,
                           evaluate_too=chief and mode == "train_and_eval", progress=progress)
            if multi_worker:
                def dataset_fn(input_context):  # this worker's share of the input, in per-replica batches
                    return pipeline.build_dataset(
                        config, "train", training=True, input_context=input_context,
                        batch_size=input_context.get_per_replica_batch_size(global_batch)).repeat()
                _custom_loop(model, strategy, dataset_fn, schedule, hooks)
            else:
                dataset = pipeline.build_dataset(config, "train", training=True, batch_size=global_batch).repeat()
                _fit(model, dataset, schedule, hooks)
            metrics = hooks.metrics
        if chief and mode == "train_and_eval" and not metrics:
            metrics = evaluate(config, model, progress=progress)
            write_metrics(metrics, model_dir, _step(model))
        return metrics
    finally:
        if not chief:
            shutil.rmtree(save_dir, ignore_errors=True)


def _initialize(model, pretrained, load, progress):
    """A fresh run's weights: the pretrained backbone, then the `load` checkpoint (see `_starting_point`); one
    progress line says what initialized the model."""
    from tfrcnn.convert.pretrained import load_pretrained

    done, skipped = [], []
    if pretrained is not None:
        what, skipped = load_pretrained(model, pretrained)
        done.append(what)
    if load is not None:
        copied, total, skipped_here = initialize_from(model, load[0])
        done.append(f"{copied} of {total} variables from {load[0]} ({load[1]})")
        skipped += skipped_here
    _say(progress, "initialized " + (", then ".join(done) if done else
                                     "from scratch (model.pretrained, load_from and resume_from are null)"))
    for line in skipped:  # always shown: a silently fresh layer would surprise
        print(f"tfrcnn: kept the initial value of {line} (shapes differ)", file=sys.stderr)


def _evaluate_latest(config, model_dir, progress):
    """mode eval: the newest checkpoint's metrics. One process evaluates (under multi_worker_mirrored the chief;
    the others return {}): evaluation runs no collective, so it needs no strategy."""
    if not is_chief():
        _say(progress, f"{task_name()}: evaluation runs on the chief only")
        return {}
    from tfrcnn.modeling import build_model
    latest = checkpoints.latest_checkpoint(model_dir)
    if latest is None:
        raise FileNotFoundError(f"{model_dir}: no checkpoint to evaluate")
    model = build_model(config, build_size=config.data.padded_size())
    checkpoints.restore(checkpoints.run_checkpoint(model), latest, model_only=True)
    metrics = evaluate(config, model, progress=progress)
    write_metrics(metrics, model_dir)
    return metrics


def _fit(model, dataset, schedule, hooks):
    """Keras' fit over `dataset` (global batches, repeated), one "epoch" per checkpoint interval."""
    off_grid = _step(model) % schedule.interval
    if off_grid:
        # Resumed off an interval boundary (the interval or the global batch changed since the checkpoint): a
        # shorter first "epoch" up to the next boundary, so that checkpoints and the last step stay on the grid
        # (as in _custom_loop); the second fit goes on with the batches after those.
        first = schedule.interval - off_grid
        with pipeline.input_errors(hooks.config.data.train.tfrecord):
            model.fit(dataset, epochs=1, steps_per_epoch=first, callbacks=[_FitCallback(hooks, last=False)],
                      verbose=0, shuffle=False)
        dataset = dataset.skip(first)
    with pipeline.input_errors(hooks.config.data.train.tfrecord):  # a corrupt image or shard: one line naming it
        # shuffle=False: the dataset shuffles itself (Keras would warn that it ignores its default True)
        model.fit(dataset, epochs=schedule.intervals, steps_per_epoch=schedule.interval,
                  initial_epoch=_step(model) // schedule.interval, callbacks=[_FitCallback(hooks)], verbose=0,
                  shuffle=False)


def _custom_loop(model, strategy, dataset_fn, schedule, hooks):
    """CustomLoop (for MultiWorkerMirroredStrategy) one interval at a time, over one iterator of
    `dataset_fn(input_context)`; ends with `check_in_sync`."""
    loop = CustomLoop(model, strategy)
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    step = _step(model)
    while step < schedule.total_steps:
        # to the next interval boundary (a run resumed after the interval changed realigns here)
        with pipeline.input_errors(hooks.config.data.train.tfrecord):
            loop.run(iterator, schedule.interval - step % schedule.interval,
                     on_step=lambda i, logs: hooks.step_end(logs))
        hooks.interval_end()
        step = _step(model)
    _, drift = check_in_sync(model, strategy)
    hooks.say(f"{strategy.num_replicas_in_sync} replicas agree on the weights at step {step} (largest relative "
              f"difference {drift:.1g})")
    hooks.train_end()


def _step(model):
    """The optimizer's step as an int (`int()` of a Keras variable fails when a strategy mirrors it)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def _say(enabled, text):
    if enabled:
        print(text, flush=True)


class _Hooks:
    """What happens between train steps, the same under `fit` (through `_FitCallback`) and `CustomLoop`.

    - `step_end(logs)` after every step: raises at the first NaN or inf loss, before that interval's checkpoint
      is written; every `log_config.interval` steps, the losses and learning rate to TensorBoard and a progress
      line with the ETA.
    - `interval_end()`: a checkpoint numbered by the global step; the evaluation when `evaluation.interval`
      epochs have passed.
    - `train_end()`: the last evaluation, unless one just ran.
    The step is always the optimizer's: the global step, the same on every worker.
    """

    def __init__(self, model, manager, model_dir, writer, config, schedule, start, evaluate_too, progress):
        self.model, self.manager, self.model_dir, self.writer = model, manager, model_dir, writer
        self.config, self.schedule, self.start = config, schedule, start
        self.log_every, self.total = config.log_config.interval, schedule.total_steps
        self.evaluate_too, self.progress = evaluate_too, progress
        self.metrics, self.evaluated_at = {}, None
        self.began = time.time()
        self.tty = sys.stdout.isatty()

    @property
    def step(self):
        return _step(self.model)

    def say(self, text):
        _say(self.progress, text)

    def step_end(self, logs):
        step = self.step
        loss = float(logs["loss"])
        if not np.isfinite(loss):
            last = checkpoints.latest_checkpoint(self.model_dir)
            raise FloatingPointError(f"the loss is {loss} at step {step}; training stopped. The last good "
                                     f"checkpoint is {last or '(none yet)'}")
        if step % self.log_every and step != self.total:
            return
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
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

    def interval_end(self):
        step = self.step
        checkpoints.save(self.manager, step)  # on failure: nothing half-written left, CheckpointError
        if step % self.schedule.eval_every == 0:
            self._evaluate(step)

    def train_end(self):
        if self.evaluated_at != self.step:
            self._evaluate(self.step)

    def _evaluate(self, step):
        if not self.evaluate_too:
            return
        evaluator = coco_evaluator(self.config)
        self.metrics = evaluate(self.config, self.model, progress=self.progress, evaluator=evaluator)
        self.evaluated_at = step
        write_metrics(self.metrics, self.model_dir, step)
        with self.writer.as_default(step=step):
            for iou_type, values in self.metrics.items():
                for name in ("AP", "AP50", "AP75"):
                    _scalar(f"eval/{iou_type}_{name}", values[name])
                for name, value in values["per_class"].items():
                    if not math.isnan(value):  # NaN: no gt of the class in the split
                        _scalar(f"eval_per_class/{iou_type}_AP/{name}", value)
            for image_id, drawing in draw_first_images(self.config, evaluator, SUMMARY_IMAGES):
                _image(f"eval_images/{image_id}", drawing)
        self.say(format_table(self.metrics))


class _FitCallback(keras.callbacks.Callback):
    """`_Hooks` as a Keras callback: `fit` runs one "epoch" per checkpoint interval (`last`: this fit ends the
    training)."""

    def __init__(self, hooks, last=True):
        super().__init__()
        self.hooks, self.last = hooks, last

    def on_train_batch_end(self, batch, logs=None):
        self.hooks.step_end(logs)

    def on_epoch_end(self, epoch, logs=None):
        self.hooks.interval_end()

    def on_train_end(self, logs=None):
        if self.last:
            self.hooks.train_end()
