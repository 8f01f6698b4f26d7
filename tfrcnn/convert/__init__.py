"""Converters from other frameworks' checkpoints.

`load_pth` reads a PyTorch ``.pth`` state dict into NumPy arrays without importing torch, so published
torchvision / MMDetection weights can be ported on a machine that has only TensorFlow.
`tfrcnn.convert.torchvision` maps torchvision's ResNet weights onto tfrcnn's backbone (`load_resnet`) and saves
them as a checkpoint for `scripts/train.py --init_checkpoint` (`save_backbone_checkpoint`).
`tfrcnn.convert.pretrained` resolves a config's `model.pretrained` (`torchvision://resnet50`: the file in
torch.hub's cache, a .pth, a tfrcnn checkpoint) and writes it into a detector's backbone when training starts.
"""
from tfrcnn.convert.pth import PthError, load_pth

__all__ = ["PthError", "load_pth"]
