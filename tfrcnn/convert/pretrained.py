"""`model.pretrained`: the backbone's starting weights, what MMDetection's `pretrained='torchvision://resnet50'` means.

The value is one of:

  torchvision://resnet18|34|50|101   torchvision's ImageNet file (ResNet<N>_Weights.IMAGENET1K_V1, e.g.
                                     resnet50-0676ba61.pth) where torch.hub keeps its downloads; read and converted
                                     on the fly (`load_pth` + `load_resnet`), never downloaded: tfrcnn fetches nothing.
  a .pth / .pt file                  a torchvision ResNet state dict (or a {"state_dict": ...} / {"model": ...}
                                     checkpoint holding one), converted the same way.
  a tfrcnn checkpoint                a prefix with its .index, or a directory holding one (what
                                     scripts/convert_checkpoint.py --arch resnetN writes): the backbone's variables,
                                     matched by path.
  null                               no pretrained weights: the backbone starts from its random initialization.

`resolve_pretrained` finds the file from the config alone, so that a missing one is one error before anything is
built; `load_pretrained` writes it into a built detector's backbone.
"""
import collections
import os

URL = "https://download.pytorch.org/models/"
SCHEME = "torchvision://"
# torchvision's ResNet<N>_Weights.IMAGENET1K_V1 file names (the URL's last part, as torch.hub saves it)
TORCHVISION_RESNETS = {18: "resnet18-f37072fd.pth", 34: "resnet34-b627a593.pth", 50: "resnet50-0676ba61.pth",
                       101: "resnet101-63fe2227.pth"}

# value: the config's string; path: the file (a .pth) or checkpoint prefix; kind: "pth" or "checkpoint"
Pretrained = collections.namedtuple("Pretrained", "value path kind")


def hub_checkpoint_dirs():
    """Where torch.hub keeps downloaded weights, in lookup order: `<torch home>/hub/checkpoints`, torch home being
    $TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch (torch.hub's rule), then
    ~/.cache/torch/hub/checkpoints when that is another directory."""
    home = os.getenv("TORCH_HOME") or os.path.join(os.getenv("XDG_CACHE_HOME") or "~/.cache", "torch")
    dirs = [os.path.expanduser(os.path.join(home, "hub", "checkpoints"))]
    default = os.path.expanduser(os.path.join("~", ".cache", "torch", "hub", "checkpoints"))
    return dirs + [default] if os.path.abspath(default) != os.path.abspath(dirs[0]) else dirs


def resolve_pretrained(config):
    """The file `config.model.pretrained` names, or None for null.

    Raises FileNotFoundError when it is absent (for torchvision://, naming the file, every directory searched and
    the URL to download it from), ValueError for a torchvision:// name tfrcnn has no file for or whose depth is
    not model.backbone.depth, and for any other URL.
    """
    from tfrcnn.training.checkpoints import find_checkpoint

    value, depth = config.model.pretrained, config.model.backbone.depth
    if not value:
        return None
    if value.startswith(SCHEME):
        known = {f"resnet{d}": d for d in TORCHVISION_RESNETS}
        name = value[len(SCHEME):]
        if name not in known:
            raise ValueError(f"model.pretrained {value!r}: tfrcnn reads torchvision://"
                             f"{', torchvision://'.join(known)} (torchvision's ImageNet files), a .pth file or a "
                             "tfrcnn checkpoint")
        if known[name] != depth:
            raise ValueError(f"model.pretrained {value!r} is a ResNet-{known[name]}, but model.backbone.depth is "
                             f"{depth}: use torchvision://resnet{depth}")
        file, dirs = TORCHVISION_RESNETS[known[name]], hub_checkpoint_dirs()
        for folder in dirs:
            if os.path.isfile(os.path.join(folder, file)):
                return Pretrained(value, os.path.join(folder, file), "pth")
        raise FileNotFoundError(
            f"model.pretrained {value!r}: {file} is in none of {', '.join(dirs)} (tfrcnn downloads nothing). On a "
            f"machine with internet, download {URL}{file} and copy it to {dirs[0]} (set TORCH_HOME to choose that "
            "directory), or set model.pretrained to its path, or to null to train the backbone from scratch")
    if value.endswith((".pth", ".pt")):
        if not os.path.isfile(value):
            raise FileNotFoundError(f"model.pretrained {value!r}: no such file")
        return Pretrained(value, value, "pth")
    prefix = find_checkpoint(value)
    if prefix is None:
        if "://" in value and not value.startswith(("gs://", "s3://", "hdfs://")):
            raise ValueError(f"model.pretrained {value!r}: tfrcnn downloads nothing; give torchvision://resnet"
                             f"{depth}, a .pth file or a tfrcnn checkpoint")
        raise FileNotFoundError(f"model.pretrained {value!r}: no such .pth file or tfrcnn checkpoint (neither "
                                f"{value}.index nor a directory holding a checkpoint)")
    return Pretrained(value, prefix, "checkpoint")


def load_pretrained(model, pretrained):
    """Writes `pretrained` (from `resolve_pretrained`) into the backbone of a built detector.

    Returns (what, skipped): `what` says what was written, e.g. "the backbone (62 variables) from
    /root/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth (torchvision://resnet18)"; `skipped` lists the
    backbone variables of a tfrcnn checkpoint whose shapes differ (kept as initialized, see
    `trainer.initialize_from`). Raises ConversionError when a state dict does not fit the backbone (nothing is
    written then), ValueError when a checkpoint holds none of its variables.
    """
    from tfrcnn.convert.pth import load_pth
    from tfrcnn.convert.torchvision import load_resnet
    from tfrcnn.training.trainer import initialize_from

    origin = f" ({pretrained.value})" if pretrained.value != pretrained.path else ""
    if pretrained.kind == "pth":
        written = load_resnet(model.backbone, load_pth(pretrained.path), source=pretrained.path)
        return f"the backbone ({written} variables) from {pretrained.path}{origin}", []
    copied, total, skipped = initialize_from(model, pretrained.path, part=model.backbone)
    return f"{copied} of {total} backbone variables from {pretrained.path}{origin}", skipped
