"""Resolving `model.pretrained` from the config alone (before a model is built): torchvision:// names to files in
torch.hub's cache, .pth paths, tfrcnn checkpoints, and one error naming everything a user needs when the file is
absent. Loading the file into a backbone through trainer.train is tests/training/test_initialization.py."""
import os
import re

import pytest
import tensorflow as tf

import tfrcnn
from tfrcnn.convert.pretrained import Pretrained, hub_checkpoint_dirs, resolve_pretrained

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs",
                      "mask_rcnn_r50_fpn_1x_coco.yaml")


def resolve(value, depth=50):
    return resolve_pretrained(tfrcnn.load_config(CONFIG, [f"model.backbone.depth={depth}"] + (
        [f"model.pretrained={value}"] if value != "torchvision://resnet50" else [])))


@pytest.fixture
def home(tmp_path, monkeypatch):
    """No torch.hub variables, and ~ in tmp_path."""
    for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_the_hub_directories_follow_torch_hub(home, tmp_path, monkeypatch):
    default = str(home / ".cache" / "torch" / "hub" / "checkpoints")
    assert hub_checkpoint_dirs() == [default]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_checkpoint_dirs() == [str(tmp_path / "xdg" / "torch" / "hub" / "checkpoints"), default]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))  # wins over XDG_CACHE_HOME, as in torch.hub
    assert hub_checkpoint_dirs() == [str(tmp_path / "th" / "hub" / "checkpoints"), default]


@pytest.mark.parametrize("depth, file", [(18, "resnet18-f37072fd.pth"), (34, "resnet34-b627a593.pth"),
                                         (50, "resnet50-0676ba61.pth"), (101, "resnet101-63fe2227.pth")])
def test_torchvision_names_are_imagenet1k_v1_files_looked_up_in_order(home, tmp_path, monkeypatch, depth, file):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    cached = home / ".cache" / "torch" / "hub" / "checkpoints" / file  # e.g. downloaded before TORCH_HOME was set
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    value = f"torchvision://resnet{depth}"
    assert resolve(value, depth) == Pretrained(value, str(cached), "pth")
    first = tmp_path / "th" / "hub" / "checkpoints" / file
    first.parent.mkdir(parents=True)
    first.write_bytes(b"")
    assert resolve(value, depth) == Pretrained(value, str(first), "pth")


def test_an_absent_file_is_one_error_saying_where_it_looked_and_where_to_get_it(home, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    folder, default = tmp_path / "th" / "hub" / "checkpoints", home / ".cache" / "torch" / "hub" / "checkpoints"
    with pytest.raises(FileNotFoundError) as error:
        resolve("torchvision://resnet50")
    assert str(error.value) == (
        f"model.pretrained 'torchvision://resnet50': resnet50-0676ba61.pth is in none of {folder}, {default} (tfrcnn "
        "downloads nothing). On a machine with internet, download "
        f"https://download.pytorch.org/models/resnet50-0676ba61.pth and copy it to {folder} (set TORCH_HOME to "
        "choose that directory), or set model.pretrained to its path, or to null to train the backbone from scratch")


@pytest.mark.parametrize("value, depth, message", [
    ("torchvision://resnet152", 50, "model.pretrained 'torchvision://resnet152': tfrcnn reads torchvision://resnet18, "
                                    "torchvision://resnet34, torchvision://resnet50, torchvision://resnet101"),
    ("torchvision://resnet50", 18, "model.pretrained 'torchvision://resnet50' is a ResNet-50, but "
                                   "model.backbone.depth is 18: use torchvision://resnet18"),
    ("open-mmlab://resnet50_caffe", 50, "model.pretrained 'open-mmlab://resnet50_caffe': tfrcnn downloads nothing"),
])
def test_what_tfrcnn_cannot_read_is_named(home, value, depth, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve(value, depth)


def test_paths_to_a_pth_file_or_a_tfrcnn_checkpoint(home, tmp_path):
    pth = tmp_path / "r50.pth"
    with pytest.raises(FileNotFoundError, match=f"^model.pretrained '{re.escape(str(pth))}': no such file$"):
        resolve(pth)
    pth.write_bytes(b"")
    assert resolve(pth) == Pretrained(str(pth), str(pth), "pth")
    # scripts/convert_checkpoint.py --arch resnet50 writes <output_dir>/backbone, without a `checkpoint` record
    folder = tmp_path / "weights" / "resnet50"
    with pytest.raises(FileNotFoundError, match="no such .pth file or tfrcnn checkpoint"):
        resolve(folder)
    prefix = tf.train.Checkpoint(v=tf.Variable(1.0)).write(str(folder / "backbone"))
    assert resolve(folder) == Pretrained(str(folder), prefix, "checkpoint")
    assert resolve(prefix) == Pretrained(prefix, prefix, "checkpoint")
    assert resolve("null") is None
