"""torchvision ResNet weights → tfrcnn's backbone: C2..C5 equal torchvision's layer1..layer4, and a state dict
that does not fit fails with every problem listed before anything is written."""
import os

import numpy as np
import pytest
import tensorflow as tf
import torch
import torchvision

import tfrcnn
from tfrcnn.convert import load_pth
from tfrcnn.convert.torchvision import ConversionError, load_resnet, save_backbone_checkpoint
from tfrcnn.training.trainer import initialize_from
from torchvision_resnet import randomize_batchnorm, stage_outputs

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "modeling", "configs",
                      "mask_rcnn_r18_tiny.yaml")


def reference_resnet(depth, seed=0):
    """A random torchvision ResNet in eval mode, its BN statistics and affine terms randomized too."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    randomize_batchnorm(model)
    return model


def detector(depth):
    overrides = f"model.backbone.depth={depth},model.backbone.norm_eval=true,model.backbone.frozen_stages=1"
    if depth >= 50:
        overrides += ",model.neck.in_channels=[256,512,1024,2048]"
    return tfrcnn.build_model(tfrcnn.load_config(CONFIG, overrides), build_size=(64, 64))


@pytest.mark.parametrize("depth", [18, 50])
def test_converted_backbone_matches_torchvision_c2_to_c5(depth, tmp_path):
    reference = reference_resnet(depth)
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(reference.state_dict(), path)
    model = detector(depth)
    written = load_resnet(model.backbone, load_pth(path), source=path.name)
    assert written == len(model.backbone.weights)

    x = torch.randn(2, 3, 64, 96)
    expected = stage_outputs(reference, x)
    outs = model.backbone(tf.constant(x.permute(0, 2, 3, 1).numpy()), training=False)
    for ours, ref in zip(outs, expected):
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_backbone_checkpoint_initializes_a_detector_by_path(tmp_path):
    """The converted backbone, saved for --init_checkpoint, fills exactly the backbone of a fresh detector."""
    state = {k: v.numpy() for k, v in reference_resnet(18).state_dict().items()}
    source = detector(18)
    load_resnet(source.backbone, state)
    prefix = save_backbone_checkpoint(source, str(tmp_path / "backbone" / "ckpt"))
    target = detector(18)
    copied, total = initialize_from(target, prefix)
    assert copied == len(target.backbone.variables) < total
    for a, b in zip(source.backbone.variables, target.backbone.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_detection_checkpoint_prefix_selects_the_backbone():
    state = {f"backbone.body.{k}": v.numpy() for k, v in reference_resnet(18).state_dict().items()}
    state["rpn.head.cls_logits.weight"] = np.zeros((3, 256, 1, 1), np.float32)  # outside the prefix: not read
    model = detector(18)
    assert load_resnet(model.backbone, state, prefix="backbone.body.") == len(model.backbone.weights)
    conv1 = next(layer for layer in model.backbone._flatten_layers() if layer.name == "conv1")
    np.testing.assert_array_equal(conv1.kernel.numpy(), state["backbone.body.conv1.weight"].transpose(2, 3, 1, 0))


def test_a_state_dict_that_does_not_fit_lists_every_problem_and_writes_nothing():
    state = {k: v.numpy() for k, v in reference_resnet(18).state_dict().items()}
    del state["layer2.0.downsample.1.running_var"]
    state["layer5.0.conv1.weight"] = np.zeros((8, 8, 3, 3), np.float32)
    state["layer1.0.conv2.weight"] = np.zeros((64, 32, 3, 3), np.float32)
    model = detector(18)
    before = [v.numpy().copy() for v in model.backbone.variables]
    with pytest.raises(ConversionError) as error:
        load_resnet(model.backbone, state, source="r18.pth")
    message = str(error.value)
    assert message.startswith("r18.pth does not fit the model: ")
    assert "1 missing: layer2.0.downsample.1.running_var" in message
    assert "1 unexpected: layer5.0.conv1.weight" in message
    assert "1 wrong shape: layer1.0.conv2.weight (64, 32, 3, 3) does not fit" in message
    for b, v in zip(before, model.backbone.variables):
        np.testing.assert_array_equal(b, v.numpy())


def test_depth_mismatch_is_reported_not_guessed():
    state = {k: v.numpy() for k, v in reference_resnet(50).state_dict().items()}
    with pytest.raises(ConversionError) as error:
        load_resnet(detector(18).backbone, state)
    message = str(error.value)
    # ResNet-50's extra blocks and 1x1 convs are unexpected; its 1x1 layer1.0.conv1 does not fit R18's 3x3
    assert "unexpected: " in message and "layer3.5.conv3.weight" in message
    assert "layer1.0.conv1.weight (64, 64, 1, 1) does not fit" in message
