"""How trainer.train starts a run, as MMDetection users expect: model_dir's own checkpoint, else resume_from
(weights, optimizer state, step), else the model.pretrained backbone and then load_from (weights only), every file
checked before anything is built. One real run (a torchvision://resnet18 backbone from $TORCH_HOME, 2 steps) is
the checkpoint the others start from."""
import contextlib
import io
import os
import re

import numpy as np
import pytest
import tensorflow as tf
import torch
import torchvision

import tfrcnn
from tfrcnn.convert.pretrained import load_pretrained, resolve_pretrained
from tfrcnn.convert.torchvision import resnet_targets
from tfrcnn.data.shapes import generate_shapes_dataset
from tfrcnn.training import trainer
from torchvision_resnet import randomize_batchnorm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "mask_rcnn_r18_fpn_shapes.yaml")
FILE = "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1, as torch.hub saves it


def write_hub(torch_home, seed):
    """A random torchvision ResNet-18 state dict where torch.hub keeps its downloads; returns it as numpy arrays."""
    torch.manual_seed(seed)
    reference = torchvision.models.resnet18(weights=None)
    randomize_batchnorm(reference)
    os.makedirs(os.path.join(torch_home, "hub", "checkpoints"), exist_ok=True)
    torch.save(reference.state_dict(), os.path.join(torch_home, "hub", "checkpoints", FILE))
    return {key: value.numpy() for key, value in reference.state_dict().items()}


def config(shapes, **extra):
    """The shapes config at 64x64: 4 images, 2 a step, 2 steps an epoch, a checkpoint every 2 steps. The backbone
    is frozen whole (with BN in eval mode), so that after training it still holds the pretrained weights."""
    values = {"data.train.tfrecord": shapes.train_tfrecords, "data.img_scale": "[64,64]", "data.pad_size": "[64,64]",
              "data.samples_per_gpu": 2, "runner.max_epochs": 1, "checkpoint_config.interval": 2,
              "log_config.interval": 1, "runtime.deterministic": False, "model.backbone.frozen_stages": 4,
              "model.backbone.norm_eval": True, **extra}
    return tfrcnn.load_config(CONFIG, ",".join(f"{k}={v}" for k, v in values.items()))


def hermetic(monkeypatch, torch_home):
    """torch.hub's cache is torch_home alone: no $XDG_CACHE_HOME, and ~ is inside it too."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HOME", str(torch_home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)


def train(cfg, model_dir, monkeypatch, **kwargs):
    """trainer.train; returns the model it trained (caught on its way into the loop)."""
    models, fit = [], trainer._fit
    monkeypatch.setattr(trainer, "_fit", lambda model, *args: (models.append(model), fit(model, *args)))
    trainer.train(cfg, str(model_dir), **kwargs)
    return models[0] if models else None


def steps_logged(out):
    return [int(line.split()[1].split("/")[0]) for line in out.splitlines() if line.startswith("step ")]


def saved_value(reader, variable):
    """A variable's value in a tfrcnn checkpoint (tf.train.Checkpoint escapes '.' as '..' and '/' as '.S')."""
    name = variable.path.split("/", 1)[-1].replace(".", "..").replace("/", ".S")
    return reader.get_tensor(f"model/{name}/.ATTRIBUTES/VARIABLE_VALUE")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes_dataset(str(tmp_path_factory.mktemp("shapes")), num_train=4, num_val=2, image_size=64,
                                   num_shards=1)


@pytest.fixture(scope="module")
def pretrained_run(shapes, tmp_path_factory):
    """(model_dir, the trained model, the hub file's state dict, printed output) of a 2-step run whose backbone
    comes from `pretrained: torchvision://resnet18`."""
    root = tmp_path_factory.mktemp("pretrained")
    state = write_hub(root / "torch", seed=0)
    with pytest.MonkeyPatch.context() as monkeypatch:
        hermetic(monkeypatch, root / "torch")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            model = train(config(shapes, **{"model.pretrained": "torchvision://resnet18"}), root / "run", monkeypatch)
    return root / "run", model, state, out.getvalue(), root / "torch"


def test_torchvision_pretrained_is_read_from_torch_home_into_the_backbone(pretrained_run):
    model_dir, model, state, out, torch_home = pretrained_run
    path = torch_home / "hub" / "checkpoints" / FILE
    assert f"initialized the backbone (100 variables) from {path} (torchvision://resnet18)\n" in out
    assert steps_logged(out) == [1, 2]
    reader = tf.train.load_checkpoint(str(model_dir / "ckpt-2"))
    for key, (variable, axes) in resnet_targets(model.backbone).items():
        expected = state[key] if axes is None else state[key].transpose(axes)
        np.testing.assert_array_equal(saved_value(reader, variable), expected, err_msg=key)
        np.testing.assert_array_equal(variable.numpy(), expected, err_msg=key)


def test_resume_from_continues_its_step_and_the_run_s_own_checkpoint_wins(pretrained_run, shapes, tmp_path,
                                                                       monkeypatch, capsys):
    source, *_ = pretrained_run
    hermetic(monkeypatch, tmp_path / "no_torch")  # resume_from restores the backbone: no pretrained file is read
    cfg = config(shapes, **{"model.pretrained": "torchvision://resnet18", "runner.max_epochs": 2,
                            "resume_from": source / "ckpt-2", "load_from": source / "ckpt-2"})
    train(cfg, tmp_path / "run", monkeypatch)
    out = capsys.readouterr().out
    assert (f"resumed from {source / 'ckpt-2'} at step 2 (resume_from; load_from {source / 'ckpt-2'} and "
            "model.pretrained torchvision://resnet18 not read)\n") in out
    assert steps_logged(out) == [3, 4]  # the schedule goes on: 2 epochs of 2 steps
    reader = tf.train.load_checkpoint(str(tmp_path / "run" / "ckpt-4"))
    assert reader.get_tensor("optimizer/iteration/.ATTRIBUTES/VARIABLE_VALUE") == 4
    assert not (source / "ckpt-4.index").exists()  # the source run is only read

    # a rerun (after a crash, say) goes on from its own ckpt-4, not back to resume_from's step 2; that restore
    # itself is tests/scripts/test_train.py's SIGKILL test
    assert trainer._starting_point(cfg, str(tmp_path / "run"), None) == (str(tmp_path / "run" / "ckpt-4"), None,
                                                                         None, "")


def test_load_from_copies_weights_over_the_pretrained_backbone(pretrained_run, shapes, tmp_path, monkeypatch,
                                                               capsys):
    source, *_ = pretrained_run
    hermetic(monkeypatch, tmp_path / "torch")
    write_hub(tmp_path / "torch", seed=1)  # other weights than the source run's backbone: load_from's must win
    models = []
    monkeypatch.setattr(trainer, "_fit", lambda model, *args: models.append(model))  # build and initialize only
    cfg = config(shapes, **{"model.pretrained": "torchvision://resnet18", "load_from": source})  # its directory
    trainer.train(cfg, str(tmp_path / "run"))
    out = capsys.readouterr().out
    (model,) = models
    total = len(model.variables)
    hub_file = tmp_path / "torch" / "hub" / "checkpoints" / FILE
    assert (f"initialized the backbone (100 variables) from {hub_file} (torchvision://resnet18), then {total} of "
            f"{total} variables from {source / 'ckpt-2'} (load_from)\n") in out
    reader = tf.train.load_checkpoint(str(source / "ckpt-2"))
    for variable in model.variables:
        np.testing.assert_array_equal(variable.numpy(), saved_value(reader, variable), err_msg=variable.path)
    assert int(model.optimizer.iterations.numpy()) == 0  # weights only: the schedule starts at step 0

    # a tfrcnn checkpoint (here a whole model's run directory) as model.pretrained gives the backbone alone
    head, conv1 = model.rpn_head.rpn_conv.kernel, model.backbone.conv1.kernel
    for variable in (head, conv1):
        variable.assign(tf.zeros_like(variable))
    what, skipped = load_pretrained(model, resolve_pretrained(config(shapes, **{"model.pretrained": source})))
    assert what == f"100 of 100 backbone variables from {source / 'ckpt-2'} ({source})" and skipped == []
    np.testing.assert_array_equal(conv1.numpy(), saved_value(reader, conv1))
    assert not head.numpy().any()


def test_the_starting_point_is_checked_before_anything_is_built(pretrained_run, shapes, tmp_path, monkeypatch):
    source, *_ = pretrained_run
    hermetic(monkeypatch, tmp_path / "torch")
    fresh = str(tmp_path / "fresh")
    cfg = config(shapes, **{"model.pretrained": "torchvision://resnet18"})
    with pytest.raises(FileNotFoundError, match=re.escape(f"https://download.pytorch.org/models/{FILE}")):
        trainer.train(cfg, fresh)
    assert not os.path.exists(fresh)  # nothing written
    # a run with a checkpoint of its own resumes: it needs no pretrained file
    assert trainer._starting_point(cfg, str(source), None) == (str(source / "ckpt-2"), None, None, "")
    # --init_checkpoint takes load_from's place: a missing load_from is then not read
    no_pretrained = config(shapes, **{"model.pretrained": "null", "load_from": tmp_path / "nothing"})
    assert trainer._starting_point(no_pretrained, fresh, str(source)) == (
        None, None, (str(source / "ckpt-2"), "--init_checkpoint"), "")
    with pytest.raises(FileNotFoundError, match=r"^load_from '.*nothing': no such tfrcnn checkpoint \(neither "):
        trainer.train(no_pretrained, fresh)
    with pytest.raises(FileNotFoundError, match=r"^resume_from 'r50\.pth': no such tfrcnn checkpoint: a PyTorch "
                                                r"file; convert it first with scripts/convert_checkpoint\.py$"):
        trainer.train(config(shapes, resume_from="r50.pth"), fresh)
    weights_only = tf.train.Checkpoint(model={"w": tf.Variable(1.0)}).write(str(tmp_path / "weights" / "ckpt-0"))
    with pytest.raises(ValueError, match=r"holds no optimizer state .* give it as load_from"):
        trainer.train(config(shapes, resume_from=weights_only), fresh)
    assert not os.path.exists(fresh)
