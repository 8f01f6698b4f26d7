"""A run directory: `model_dir/config.yaml` (the resolved config) beside `model_dir/ckpt-N` checkpoints.

Checkpoints are TensorFlow checkpoints (`tf.train.CheckpointManager` writes and prunes them) whose entries are
keyed by each Keras variable's path, without the model's own name: `model/backbone/conv1/kernel`,
`optimizer/...`. Keras 3 layers do not expose their sublayers to `tf.train.Checkpoint`'s object graph (a
`tf.train.Checkpoint(model=model)` silently saves only the variables of directly attached layers: 21 of a Mask
R-CNN's 138 here), so the variables are listed explicitly. Reading one for inference restores the model alone.
"""
import os

import tensorflow as tf

from tfrcnn.config import load_config

CONFIG_NAME = "config.yaml"


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
    run_checkpoint(model).read(path).expect_partial().assert_existing_objects_matched()
    return model, config, path
