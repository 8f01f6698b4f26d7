"""torchvision weights → tfrcnn layers.

tfrcnn's ResNet names its layers after torchvision's state dict (module path with '.' → '_', see
`tfrcnn.modeling.resnet`), so converting is a name table plus layout changes:

  torch Conv2d weight (O, I, kh, kw)          → Keras kernel (kh, kw, I, O); bias as is
  BatchNorm weight, bias, running_mean/var    → gamma, beta, moving_mean, moving_variance

Every check runs before any weight is written: a state dict with missing keys, unexpected keys or wrong shapes
raises `ConversionError` listing all of them, and the layer keeps its weights.
"""
import os

import keras
import numpy as np
import tensorflow as tf

from tfrcnn.training.checkpoints import run_checkpoint

_NORM = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
_CONV_LAYOUT = (2, 3, 1, 0)  # (O, I, kh, kw) → (kh, kw, I, O)


class ConversionError(ValueError):
    """A state dict that does not fit the model: the message lists every missing, unexpected or misshapen key."""


def resnet_targets(backbone):
    """{torchvision key: (Keras variable, axes of the transpose or None)} of a built tfrcnn ResNet.

    Keys are those of a torchvision ResNet's state dict without `fc.*` and `num_batches_tracked`, e.g.
    `layer1.0.conv1.weight`, `layer1.0.downsample.1.running_var`.
    """
    if not backbone.built:
        raise ValueError("resnet_targets: build the backbone first (call it once or build the detector)")
    targets = {}
    for layer in backbone._flatten_layers(include_self=False, recursive=True):
        module = layer.name.replace("_", ".")
        if isinstance(layer, keras.layers.BatchNormalization):
            for torch_name, keras_name in _NORM.items():
                targets[f"{module}.{torch_name}"] = (getattr(layer, keras_name), None)
        elif isinstance(layer, keras.layers.GroupNormalization):
            raise ConversionError(f"{layer.name}: torchvision's ResNets use BatchNorm, this backbone has "
                                  f"{type(layer).__name__} (model.backbone.norm_cfg.type)")
        elif isinstance(layer, keras.layers.Conv2D):
            targets[f"{module}.weight"] = (layer.kernel, _CONV_LAYOUT)
            if layer.use_bias:
                targets[f"{module}.bias"] = (layer.bias, None)
    return targets


def _ignored_resnet_key(key):
    # The ImageNet classifier and BN's batch counter have no counterpart in a detection backbone.
    return key.startswith("fc.") or key.endswith("num_batches_tracked")


def load_resnet(backbone, state_dict, prefix="", source="state dict"):
    """Copies a torchvision ResNet's weights into a built tfrcnn ResNet.

    Args:
      backbone: `tfrcnn.modeling.resnet.ResNet` of the same depth, built (e.g. `model.backbone` of a built
        detector).
      state_dict: {key: numpy array}, e.g. `tfrcnn.convert.load_pth("resnet50-0676ba61.pth")`.
      prefix: only keys starting with it are read, without it: "" for an ImageNet checkpoint,
        "backbone.body." for a detection checkpoint's backbone.
      source: what the error messages call the state dict (its file name).
    Returns:
      the number of variables written.
    Raises:
      ConversionError listing every missing key, unexpected key and shape mismatch; nothing is written then.
    """
    given = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
    given = {key: value for key, value in given.items() if not _ignored_resnet_key(key)}
    return assign(resnet_targets(backbone), given, f"{source}{' under ' + repr(prefix) if prefix else ''}")


def assign(targets, given, source):
    """Writes given[key] (transposed by targets[key][1]) into targets[key][0] for every key, after checking
    that both have the same keys and every shape fits; else ConversionError naming all problems."""
    missing = [key for key in targets if key not in given]
    unexpected = [key for key in given if key not in targets]
    values, misshapen = {}, []
    for key, (variable, axes) in targets.items():
        if key not in given:
            continue
        value = np.asarray(given[key])
        if axes is not None and value.ndim == len(axes):
            value = value.transpose(axes)
        if tuple(value.shape) != tuple(variable.shape):
            misshapen.append(f"{key} {tuple(np.shape(given[key]))} does not fit {variable.path} "
                             f"{tuple(variable.shape)}")
        else:
            values[key] = value
    problems = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)):
        if items:
            problems.append(f"{len(items)} {title}: " + ", ".join(items))
    if problems:
        raise ConversionError(f"{source} does not fit the model: " + "; ".join(problems))
    for key, (variable, _) in targets.items():
        variable.assign(values[key].astype(variable.dtype))
    return len(values)


def save_backbone_checkpoint(model, path):
    """Writes the backbone's variables of a built tfrcnn detector as a checkpoint at prefix `path`, in the layout
    `scripts/train.py --init_checkpoint` reads (`model/backbone/...`, matched by variable path). Returns the
    checkpoint's path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    checkpoint = run_checkpoint(model)
    backbone = {key: v for key, v in checkpoint.model.items() if key.startswith("backbone/")}
    return tf.train.Checkpoint(model=backbone).write(path)
