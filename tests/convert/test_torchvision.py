"""torchvision ResNet weights → tfrcnn's backbone: C2..C5 equal torchvision's layer1..layer4, and a state dict
that does not fit fails with every problem listed before anything is written."""
import os
import re

import numpy as np
import pytest
import tensorflow as tf
import torch
import torchvision

import tfrcnn
from tfrcnn.convert import load_pth
from tfrcnn.convert.torchvision import ConversionError, load_detector, load_resnet, save_backbone_checkpoint
from tfrcnn.training.trainer import initialize_from
from torchvision_detection import reference_detector
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
    copied, total, _ = initialize_from(target, prefix)
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


# --- detection checkpoints ---------------------------------------------------------------------------------------
# The key mapping is the same whatever the ResNet: an R18 Mask R-CNN keeps these tests fast (the R50 parity test is
# tests/convert/test_torchvision_detection.py).
PRESETS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs",
                       "torchvision")


def r18_detector(arch="maskrcnn_resnet50_fpn"):
    config = tfrcnn.load_config(os.path.join(PRESETS, f"{arch}_coco.yaml"),
                                "model.backbone.depth=18,model.neck.in_channels=[64,128,256,512]")
    return tfrcnn.build_model(config, build_size=(64, 64))


@pytest.fixture(scope="module")
def r18_state():
    reference = reference_detector("maskrcnn_resnet50_fpn", depth=18, calibrated=False)
    return {key: value.numpy() for key, value in reference.state_dict().items()}


def legacy_names(state):
    """The key names of older torchvision checkpoint files."""
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"^rpn\.head\.conv\.0\.0\.", "rpn.head.conv.", key)
        key = re.sub(r"^roi_heads\.mask_head\.(\d+)\.0\.", lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.", key)
        key = re.sub(r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.0\.", r"backbone.fpn.\1.\2.", key)
        renamed[key] = value
    return renamed


def test_legacy_key_names_convert_to_the_same_weights(r18_state):
    legacy = legacy_names(r18_state)
    assert "rpn.head.conv.weight" in legacy and "roi_heads.mask_head.mask_fcn4.bias" in legacy
    assert "backbone.fpn.layer_blocks.3.weight" in legacy
    current, old = r18_detector(), r18_detector()
    assert load_detector(current, r18_state) == len(current.weights) == load_detector(old, legacy)
    for a, b in zip(current.weights, old.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_detection_weights_land_in_their_layers(r18_state):
    model = r18_detector()
    load_detector(model, r18_state)
    box, mask = model.roi_head.bbox_head, model.roi_head.mask_head
    # fc6 reads NHWC-flattened RoI features: row (y * 7 + x) * 256 + c is torchvision's column c * 49 + y * 7 + x.
    y, x, c = 3, 5, 17
    np.testing.assert_array_equal(box.shared_fcs[0].kernel.numpy()[(y * 7 + x) * 256 + c],
                                  r18_state["roi_heads.box_head.fc6.weight"][:, c * 49 + y * 7 + x])
    # background (class 0) slots dropped: box deltas of class k at 4(k-1).., mask channel k at k-1
    np.testing.assert_array_equal(box.fc_reg.kernel.numpy()[:, 4:8],
                                  r18_state["roi_heads.box_predictor.bbox_pred.weight"][8:12].T)
    np.testing.assert_array_equal(box.fc_cls.bias.numpy(), r18_state["roi_heads.box_predictor.cls_score.bias"])
    np.testing.assert_array_equal(mask.conv_logits.bias.numpy(),
                                  r18_state["roi_heads.mask_predictor.mask_fcn_logits.bias"][1:])
    np.testing.assert_array_equal(mask.upsample.kernel.numpy(),
                                  r18_state["roi_heads.mask_predictor.conv5_mask.weight"].transpose(2, 3, 1, 0))


def test_faster_rcnn_takes_the_same_checkpoint_without_the_mask_keys(r18_state):
    boxes_only = {k: v for k, v in r18_state.items() if ".mask_" not in k}
    model = r18_detector("fasterrcnn_resnet50_fpn")
    assert load_detector(model, boxes_only) == len(model.weights)
    with pytest.raises(ConversionError, match=r"unexpected: roi_heads\.mask_head\.0\.0\.weight"):
        load_detector(r18_detector("fasterrcnn_resnet50_fpn"), r18_state)


def test_a_detection_checkpoint_that_does_not_fit_lists_every_problem(r18_state):
    state = dict(r18_state)
    del state["rpn.head.bbox_pred.bias"]
    state["roi_heads.box_head.fc8.weight"] = np.zeros((4, 4), np.float32)
    state["roi_heads.box_predictor.cls_score.weight"] = np.zeros((21, 1024), np.float32)  # a 20-class VOC model
    model = r18_detector()
    before = [w.numpy() for w in model.weights]
    with pytest.raises(ConversionError) as error:
        load_detector(model, state, source="voc.pth")
    message = str(error.value)
    assert message.startswith("voc.pth does not fit the model: ")
    assert "1 missing: rpn.head.bbox_pred.bias" in message
    assert "1 unexpected: roi_heads.box_head.fc8.weight" in message
    assert "roi_heads.box_predictor.cls_score.weight (21, 1024) does not fit" in message
    for a, b in zip(before, model.weights):  # nothing was written
        np.testing.assert_array_equal(a, b.numpy())


def test_a_converted_coco_detector_initializes_another_class_count(r18_state, tmp_path):
    """--init_checkpoint from a converted COCO model into a 3-class model: all but the class-sized layers copied."""
    from tfrcnn.training.checkpoints import run_checkpoint

    coco = r18_detector()
    load_detector(coco, r18_state)
    prefix = run_checkpoint(coco).write(str(tmp_path / "ckpt-0"))
    config = tfrcnn.load_config(os.path.join(PRESETS, "maskrcnn_resnet50_fpn_coco.yaml"),
                                "model.backbone.depth=18,model.neck.in_channels=[64,128,256,512],"
                                "model.roi_head.bbox_head.num_classes=3,model.roi_head.mask_head.num_classes=3,"
                                "data.category_ids=[1,2,3],data.classes=null")
    model = tfrcnn.build_model(config, build_size=(64, 64))
    copied, total, skipped = initialize_from(model, prefix)
    assert copied == total - 6 and len(skipped) == 6
    assert any(line.startswith("maskrcnn/roi_head/bbox_head/fc_cls/kernel: checkpoint [1024, 91], model [1024, 4]")
               for line in skipped), skipped
    np.testing.assert_array_equal(model.roi_head.bbox_head.shared_fcs[1].kernel.numpy(),
                                  r18_state["roi_heads.box_head.fc7.weight"].T)
