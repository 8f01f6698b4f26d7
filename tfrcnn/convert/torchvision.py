"""torchvision weights → tfrcnn layers: ImageNet ResNets onto the backbone, and maskrcnn_resnet50_fpn /
fasterrcnn_resnet50_fpn detection checkpoints onto a whole detector.

tfrcnn's ResNet names its layers after torchvision's state dict (module path with '.' → '_', see
`tfrcnn.modeling.resnet`); the FPN, RPN and RoI heads keep MMDetection's names, and their docstrings
(`tfrcnn.modeling.rpn`, `tfrcnn.modeling.heads`) give the torchvision key of each layer. Converting is a name
table plus layout changes:

  torch Conv2d weight (O, I, kh, kw)          → Keras kernel (kh, kw, I, O); bias as is
  torch ConvTranspose2d weight (I, O, kh, kw) → Keras Conv2DTranspose kernel (kh, kw, O, I)
  torch Linear weight (O, I)                  → Dense kernel (I, O); fc6's rows from NCHW to NHWC flattening
  BatchNorm weight, bias, running_mean/var    → gamma, beta, moving_mean, moving_variance
  91-class predictors (background first)      → tfrcnn's: the background's box deltas and mask channel dropped

Legacy key names (older torchvision files: `rpn.head.conv.weight`, `roi_heads.mask_head.mask_fcn1.weight`,
`backbone.fpn.inner_blocks.0.weight`) are renamed to the current ones first, as torchvision does on load.

Every check runs before any weight is written: a state dict with missing keys, unexpected keys or wrong shapes
raises `ConversionError` listing all of them, and the layer keeps its weights.
"""
import os
import re

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
    """Writes given[key], converted by targets[key][1], into the variable targets[key][0] for every key, after
    checking that both have the same keys and every shape fits; else ConversionError naming all problems.

    The conversion is None (as is), a tuple of transpose axes (applied when the ranks agree), or a function of the
    numpy array that returns None when the array's shape does not fit it.
    """
    missing = [key for key in targets if key not in given]
    unexpected = [key for key in given if key not in targets]
    values, misshapen = {}, []
    for key, (variable, convert) in targets.items():
        if key not in given:
            continue
        value = np.asarray(given[key])
        if callable(convert):
            converted = convert(value)
            value = value if converted is None else converted  # None: reported as a wrong shape below
        elif convert is not None and value.ndim == len(convert):
            value = value.transpose(convert)
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


# ------------------------------------------------------------------------------------------ detection checkpoints

_LEGACY_KEYS = (
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
    (re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$"),
     lambda m: f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}"),
    (re.compile(r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(weight|bias)$"), r"backbone.fpn.\1.\2.0.\3"),
)


def current_key(key):
    """A torchvision detection state-dict key under its current name (legacy names renamed, others as they are)."""
    for pattern, replacement in _LEGACY_KEYS:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return key


def _conv(layer, prefix, drop_first_output=False, layout=_CONV_LAYOUT):
    """{prefix.weight, prefix.bias} of a torch conv → the Keras conv `layer`; `drop_first_output` removes output
    channel 0 (torchvision's background mask channel)."""
    def weight(w):
        return (w[1:] if drop_first_output else w).transpose(layout)

    def bias(b):
        return b[1:] if drop_first_output else b
    return {f"{prefix}.weight": (layer.kernel, weight), f"{prefix}.bias": (layer.bias, bias)}


def _fc6(layer, roi_size, channels):
    """TwoMLPHead.fc6 (O, C·S·S flattened NCHW) → shared_fcs_0's kernel (S·S·C flattened NHWC, O)."""
    def weight(w):
        if w.ndim != 2 or w.shape[1] != channels * roi_size * roi_size:
            return None
        w = w.reshape(w.shape[0], channels, roi_size, roi_size)  # (O, C, S, S)
        return w.transpose(2, 3, 1, 0).reshape(roi_size * roi_size * channels, w.shape[0])
    return {"roi_heads.box_head.fc6.weight": (layer.kernel, weight), "roi_heads.box_head.fc6.bias": (layer.bias, None)}


def _linear(layer, prefix, drop_first=0):
    """A torch Linear → a Dense layer; `drop_first` removes that many leading outputs (the background's)."""
    return {f"{prefix}.weight": (layer.kernel, lambda w: w[drop_first:].T if w.ndim == 2 else None),
            f"{prefix}.bias": (layer.bias, lambda b: b[drop_first:])}


def detector_targets(model):
    """{current torchvision key: (Keras variable, conversion)} of a built tfrcnn FasterRCNN / MaskRCNN with
    torchvision's head layout: P2–P6 from a max-pooled P5, a class-specific box head whose classes are
    torchvision's labels 1..N (its background slot 0 is dropped)."""
    config = model.config
    if config.model.neck.add_extra_convs:
        raise ConversionError("torchvision's FPN makes P6 by max-pooling P5: set model.neck.add_extra_convs false")
    head_cfg = config.model.roi_head.bbox_head
    if head_cfg.reg_class_agnostic:
        raise ConversionError("torchvision's box predictor is class-specific: set "
                              "model.roi_head.bbox_head.reg_class_agnostic false")
    targets = {f"backbone.body.{k}": v for k, v in resnet_targets(model.backbone).items()}
    neck, rpn, box = model.neck, model.rpn_head, model.roi_head.bbox_head
    for i, conv in enumerate(neck.lateral_convs):
        targets.update(_conv(conv, f"backbone.fpn.inner_blocks.{i}.0"))
    for i, conv in enumerate(neck.fpn_convs):
        targets.update(_conv(conv, f"backbone.fpn.layer_blocks.{i}.0"))
    targets.update(_conv(rpn.rpn_conv, "rpn.head.conv.0.0"))
    targets.update(_conv(rpn.rpn_cls, "rpn.head.cls_logits"))
    targets.update(_conv(rpn.rpn_reg, "rpn.head.bbox_pred"))
    targets.update(_fc6(box.shared_fcs[0], head_cfg.roi_feat_size, head_cfg.in_channels))
    targets.update(_linear(box.shared_fcs[1], "roi_heads.box_head.fc7"))
    targets.update(_linear(box.fc_cls, "roi_heads.box_predictor.cls_score"))
    targets.update(_linear(box.fc_reg, "roi_heads.box_predictor.bbox_pred", drop_first=4))
    mask = model.roi_head.mask_head
    if mask is not None:
        for i, conv in enumerate(mask.convs):
            targets.update(_conv(conv, f"roi_heads.mask_head.{i}.0"))
        targets.update(_conv(mask.upsample, "roi_heads.mask_predictor.conv5_mask", layout=(2, 3, 1, 0)))
        targets.update(_conv(mask.conv_logits, "roi_heads.mask_predictor.mask_fcn_logits", drop_first_output=True))
    return targets


def load_detector(model, state_dict, source="state dict"):
    """Copies a torchvision maskrcnn_resnet50_fpn / fasterrcnn_resnet50_fpn state dict into a built tfrcnn detector
    of the same structure (e.g. built from configs/torchvision/*.yaml).

    Args:
      model: a built MaskRCNN (for a Mask R-CNN checkpoint) or FasterRCNN.
      state_dict: {key: numpy array}, current or legacy key names; BN `num_batches_tracked` counters are ignored.
      source: what error messages call the state dict (its file name).
    Returns:
      the number of variables written.
    Raises:
      ConversionError listing every missing key, unexpected key and shape mismatch; nothing is written then.
    """
    given, renamed_from = {}, {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        name = current_key(key)
        if name in given:
            raise ConversionError(f"{source}: {key!r} and {renamed_from[name]!r} are both {name!r} "
                                  "(a file mixing legacy and current key names)")
        given[name], renamed_from[name] = value, key
    return assign(detector_targets(model), given, source)
