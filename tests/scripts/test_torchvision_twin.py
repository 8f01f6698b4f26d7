"""benchmarks/torchvision_twin.py: torchvision's model built from a tfrcnn config has tfrcnn's structure."""
import os
import sys

import pytest

import tfrcnn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from torchvision_twin import build_twin, twin_settings  # noqa: E402

SHAPES = os.path.join(ROOT, "configs", "mask_rcnn_r18_fpn_shapes.yaml")


def _trainable(torch_model):
    return sum(p.numel() for p in torch_model.parameters() if p.requires_grad)


@pytest.mark.parametrize("overrides", [None, "model.type=FasterRCNN,model.roi_head.mask_head=null,"
                                             "model.roi_head.mask_roi_extractor=null,evaluation.metric=[bbox]"])
def test_twin_of_the_main_job_has_tfrcnn_s_parameters(overrides):
    config = tfrcnn.load_config(SHAPES, overrides)
    settings = twin_settings(config, 192)
    twin = build_twin(settings)
    model = tfrcnn.build_model(config, build_size=(192, 192))
    ours = sum(int(v.numpy().size) for v in model.trainable_variables)
    # torchvision's predictors also hold a background slot: 4 box deltas per fc input (and a bias each), and a
    # mask logits channel (its 1x1 kernel and bias).
    roi = config.model.roi_head
    extra = 4 * (roi.bbox_head.fc_out_channels + 1)
    if config.model.with_mask:
        extra += roi.mask_head.conv_out_channels + 1
    assert _trainable(twin) == ours + extra
    assert settings["norm"] == "bn" and settings["trainable_layers"] == 5
    assert settings["anchor_sizes"] == [[32.0], [64.0], [128.0], [256.0], [512.0]]
    assert settings["rpn"]["post_nms_top_n_train"] == 256 and settings["box"]["batch_size_per_image"] == 64
    assert twin.rpn._pre_nms_top_n == {"training": 500, "testing": 500}
    assert twin.roi_heads.fg_bg_sampler.batch_size_per_image == 64


def test_twin_of_the_r50_config_freezes_what_mmdetection_freezes():
    config = tfrcnn.load_config(os.path.join(ROOT, "configs", "mask_rcnn_r50_fpn_1x_coco.yaml"))
    settings = twin_settings(config, 512)
    assert settings["norm"] == "frozen_bn" and settings["trainable_layers"] == 3
    twin = build_twin(settings)
    frozen = {name.split(".")[0] for name, p in twin.backbone.body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}  # FrozenBatchNorm2d has no parameters
    model = tfrcnn.build_model(config, build_size=(512, 512))
    # MMDetection's norm_eval still trains BN's gamma and beta; torchvision's FrozenBatchNorm2d holds buffers only
    ours = sum(int(v.numpy().size) for v in model.trainable_variables if v.name not in ("gamma", "beta"))
    roi = config.model.roi_head
    assert _trainable(twin) == ours + 4 * (roi.bbox_head.fc_out_channels + 1) + roi.mask_head.conv_out_channels + 1


@pytest.mark.parametrize("override, key", [("model.rpn_head.feat_channels=32", "feat_channels"),
                                           ("model.neck.add_extra_convs=on_input", "model.neck"),
                                           ("model.roi_head.bbox_roi_extractor.roi_layer.type=RoIPool",
                                            "bbox_roi_extractor")])
def test_what_torchvision_cannot_build_is_named(override, key):
    with pytest.raises(ValueError, match=key):
        twin_settings(tfrcnn.load_config(SHAPES, override), 192)
