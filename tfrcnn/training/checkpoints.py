"""A run directory: `model_dir/config.yaml` (the resolved config) beside `model_dir/ckpt-N` checkpoints.

Checkpoints are TensorFlow checkpoints (`tf.train.CheckpointManager` writes and prunes them) whose entries are
keyed by each Keras variable's path, without the model's own name: `model/backbone/conv1/kernel`,
`optimizer/...`. Keras 3 layers do not expose their sublayers to `tf.train.Checkpoint`'s object graph (a
`tf.train.Checkpoint(model=model)` silently saves only the variables of directly attached layers: 21 of a Mask
R-CNN's 138 here), so the variables are listed explicitly. Reading one for inference restores the model alone.
"""
import functools
import glob
import os
import re

import tensorflow as tf

from tfrcnn.config import CONFIG_NAME, load_config


def _by_path(variables, owner):
    """{path without its first component: variable}; a repeated path would make a checkpoint ambiguous."""
    table = {}
    for v in variables:
        key = v.path.split("/", 1)[-1]
        if key in table:
            raise ValueError(f"{owner}: two variables share the path {v.path!r}; checkpoints need unique paths")
        table[key] = v
    return table


def run_checkpoint(model, optimizer=None):
    """A tf.train.Checkpoint of every model variable (and, when given, of the optimizer's step and momenta; the
    optimizer must be built, e.g. `optimizer.build(model.trainable_variables)`, before saving or restoring)."""
    tracked = {"model": _by_path(model.variables, model.name)}
    if optimizer is not None:
        tracked["optimizer"] = _by_path(optimizer.variables, "the optimizer")
    return tf.train.Checkpoint(**tracked)


def latest_checkpoint(model_dir):
    """The newest checkpoint prefix in model_dir, or None."""
    return tf.train.latest_checkpoint(model_dir) if model_dir and os.path.isdir(model_dir) else None


def find_checkpoint(path):
    """The checkpoint prefix that `path` names, or None: `path` itself when `path.index` exists; for a directory,
    its newest checkpoint (the `checkpoint` record of a CheckpointManager), else its only `*.index` (the
    `backbone` that scripts/convert_checkpoint.py writes, without a record)."""
    try:
        if tf.io.gfile.exists(path + ".index"):
            return path
        if not tf.io.gfile.isdir(path):
            return None
        found = tf.train.latest_checkpoint(path) or tf.io.gfile.glob(os.path.join(path, "*.index"))
    except tf.errors.OpError:  # a URL scheme no TensorFlow file system serves (https://, open-mmlab://)
        return None
    if isinstance(found, str):
        return found
    return found[0][:-len(".index")] if len(found) == 1 else None


def load_model(model_dir=None, config_file=None, checkpoint_path=None, overrides=None):
    """Builds a run's model and restores its weights; returns (model, config, checkpoint path).

    Args:
      model_dir: a training run's directory: its config.yaml and newest checkpoint are the defaults.
      config_file: a config instead of model_dir/config.yaml.
      checkpoint_path: a checkpoint prefix (model_dir/ckpt-12) instead of the newest one.
      overrides: `--params_override` string applied to the config.
    Raises FileNotFoundError naming what is missing.
    """
    from tfrcnn.modeling import build_model

    if config_file is None:
        if model_dir is None:
            raise FileNotFoundError("give a model_dir (with config.yaml) or a config_file")
        config_file = os.path.join(model_dir, CONFIG_NAME)
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"{config_file}: no such file (is {model_dir} a training run's model_dir?)")
    config = load_config(config_file, overrides)
    path = checkpoint_path or latest_checkpoint(model_dir)
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {model_dir}" if model_dir else "give a checkpoint_path")
    if not tf.io.gfile.exists(path + ".index"):
        raise FileNotFoundError(f"{path}: no such checkpoint ({path}.index is missing)")
    model = build_model(config)
    # every model variable must come from the checkpoint; the optimizer's entries are not needed here
    restore(run_checkpoint(model), path, model_only=True)
    return model, config, path


class CheckpointError(OSError):
    """A checkpoint that TensorFlow cannot read or write; the message names its files."""


def tensorflow_message(error):
    """The first line of a TensorFlow error's message, without the "{{function_node ...}}" prefix and the
    "[Op:...]" suffix TensorFlow adds."""
    lines = (getattr(error, "message", None) or str(error) or type(error).__name__).strip().splitlines()
    line = re.sub(r"^(?:\{\{function_node [^}]*\}\}\s*)+", "", lines[0] if lines else "")
    return re.sub(r"\s*\[Op:[^\]]*\](?:\s*name:\s*\S*)?\s*$", "", line) or type(error).__name__


# What reading a damaged checkpoint raises: an OpError (DataLossError for a checksum mismatch, "not an sstable"
# for a cut .index), or, for a cut .data file, the IndexError "Read less bytes than requested" of its reader.
_UNREADABLE = (tf.errors.OpError, IndexError)


def _glob(path, suffix):
    """The files named `path` + `suffix` (a glob, `path` taken literally)."""
    if "://" in path:
        return tf.io.gfile.glob(path + suffix)
    return glob.glob(glob.escape(path) + suffix)


def _unreadable(path, error):
    """CheckpointError for checkpoint `path` that raised `error` when read, naming the file at fault if known."""
    message = tensorflow_message(error)
    data = sorted(os.path.basename(p) for p in _glob(path, ".data-*")) or [os.path.basename(path) + ".data-*"]
    if isinstance(error, IndexError) or "shard" in message:
        files = " or ".join(data)
    elif "sstable" in message:
        files = os.path.basename(path) + ".index"
    else:
        files = " or ".join([os.path.basename(path) + ".index"] + data)
    return CheckpointError(f"{path}: cannot read this checkpoint: {message} ({files} is truncated or corrupt: "
                           "a copy or a save that did not finish?)")


def restore(checkpoint, path, model_only=False):
    """Restores tf.train.Checkpoint `checkpoint` from checkpoint prefix `path` and asserts that each of its
    objects got a value; `model_only`: `read(path).expect_partial()`, the checkpoint's other entries (the
    optimizer's) are not needed. Returns the load status. A file TensorFlow cannot read (a truncated or corrupt
    .data or .index file) raises CheckpointError naming it."""
    try:
        status = checkpoint.read(path).expect_partial() if model_only else checkpoint.restore(path)
    except _UNREADABLE as e:
        raise _unreadable(path, e) from e
    return status.assert_existing_objects_matched()


def reads_checkpoint(function):
    """Decorates function(model, path, ...), which reads checkpoint prefix `path`: an unreadable file raises
    CheckpointError naming it, as in `restore`."""
    @functools.wraps(function)
    def reading(model, path, *args, **kwargs):
        try:
            return function(model, path, *args, **kwargs)
        except _UNREADABLE as e:
            raise _unreadable(path, e) from e
    return reading


def save(manager, step):
    """`manager.save(checkpoint_number=step)`: the checkpoint `<prefix>-<step>`, recorded as the newest. When
    TensorFlow fails to write it (a full disk, a file size limit, no permission), removes what the save left (its
    `<prefix>-<step>_temp` folder, `<prefix>-<step>.index` / `.data-*`, a `checkpoint.tmp*` record) and raises
    CheckpointError naming the checkpoint and the one that stays the newest."""
    prefix = getattr(manager, "_checkpoint_prefix", os.path.join(manager.directory, "ckpt"))
    path = f"{prefix}-{step}"
    try:
        return manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as e:
        newest = tf.train.latest_checkpoint(manager.directory)  # the record on disk, which a restart reads
        if newest == path:  # saved and recorded; what failed came after (removing an old checkpoint)
            raise CheckpointError(f"{path}: saved, then: {tensorflow_message(e)}") from e
        for left in _glob(path, "_temp*") + _glob(path, ".*") + _glob(os.path.join(manager.directory, "checkpoint"),
                                                                       ".tmp*"):
            try:
                tf.io.gfile.rmtree(left) if tf.io.gfile.isdir(left) else tf.io.gfile.remove(left)
            except (tf.errors.OpError, OSError):  # the error below matters more than what is left
                pass
        reason = tensorflow_message(e)
        reason = reason.split("; ", 1)[1] if reason.startswith(prefix) and "; " in reason else reason
        raise CheckpointError(f"cannot save the checkpoint {path}: {reason}; the newest checkpoint is still "
                              f"{newest or '(none yet)'}") from e
