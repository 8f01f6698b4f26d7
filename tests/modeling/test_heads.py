"""Tests for tfrcnn.modeling.heads: the box and mask heads' shapes, parameter counts, initialization, and their
outputs against torchvision's heads from the same weights (their losses and predictions: test_roi_heads.py)."""
import math

import numpy as np
import pytest
import tensorflow as tf
import torch
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from tfrcnn.config import BBoxHeadCfg, MaskHeadCfg
from tfrcnn.modeling.heads import FCNMaskHead, Shared2FCBBoxHead

C = 4  # FPN channels in the small heads
NUM_CLASSES = 3


def count(layer):
    return sum(int(np.prod(v.shape)) for v in layer.weights)


def test_bbox_head_shapes():
    head = Shared2FCBBoxHead(BBoxHeadCfg(in_channels=C, fc_out_channels=16, num_classes=NUM_CLASSES))
    cls, deltas = head(tf.zeros([2, 5, 7, 7, C]))
    assert cls.shape == (2, 5, NUM_CLASSES + 1) and deltas.shape == (2, 5, NUM_CLASSES, 4)
    assert cls.dtype == deltas.dtype == tf.float32
    agnostic = Shared2FCBBoxHead(BBoxHeadCfg(in_channels=C, fc_out_channels=16, reg_class_agnostic=True))
    assert agnostic(tf.zeros([1, 3, 7, 7, C]))[1].shape == (1, 3, 1, 4)
    with pytest.raises(ValueError, match="expected"):
        Shared2FCBBoxHead(BBoxHeadCfg(in_channels=C)).build((1, 3, 5, 5, C))


def test_bbox_head_parameter_count():
    head = Shared2FCBBoxHead(BBoxHeadCfg())
    head.build()
    # fc6: 256·7·7 = 12544 inputs → 1024: 12,845,056 weights + 1024 biases; fc7: 1024·1024 + 1024;
    # fc_cls: 1024·81 + 81 (80 classes + background); fc_reg: 1024·320 + 320 (4 per class).
    expected = (12544 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 81 + 81) + (1024 * 320 + 320)
    assert expected == 12_846_080 + 1_049_600 + 83_025 + 328_000 == 14_306_705
    assert count(head) == expected
    # torchvision at 91 classes (background included) = ours at 90 classes + its background regression row block.
    tv = sum(p.numel() for m in (TwoMLPHead(12544, 1024), FastRCNNPredictor(1024, 91)) for p in m.parameters())
    ours90 = Shared2FCBBoxHead(BBoxHeadCfg(num_classes=90))
    ours90.build()
    assert tv == count(ours90) + 1024 * 4 + 4


def test_init_statistics():
    head = Shared2FCBBoxHead(BBoxHeadCfg(in_channels=16, fc_out_channels=256, num_classes=80))
    head.build()
    np.testing.assert_allclose(np.std(head.fc_cls.kernel.numpy()), 0.01, rtol=0.05)
    np.testing.assert_allclose(np.std(head.fc_reg.kernel.numpy()), 0.001, rtol=0.05)
    # Xavier uniform: U(±sqrt(6 / (fan_in + fan_out))).
    limit = math.sqrt(6 / (16 * 49 + 256))
    kernel = head.shared_fcs[0].kernel.numpy()
    assert kernel.max() <= limit and kernel.min() >= -limit and kernel.max() > 0.95 * limit
    mask = FCNMaskHead(MaskHeadCfg(num_convs=1, in_channels=64, conv_out_channels=64, num_classes=80))
    mask.build()
    # Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out_channels · kh · kw)).
    np.testing.assert_allclose(np.std(mask.convs[0].kernel.numpy()), math.sqrt(2 / (64 * 9)), rtol=0.05)
    np.testing.assert_allclose(np.std(mask.upsample.kernel.numpy()), math.sqrt(2 / (64 * 4)), rtol=0.05)
    np.testing.assert_allclose(np.std(mask.conv_logits.kernel.numpy()), math.sqrt(2 / 80), rtol=0.1)
    assert all(not np.any(v.numpy()) for v in head.weights + mask.weights if v.name == "bias")


def test_mask_head_shapes_and_parameter_count():
    head = FCNMaskHead(MaskHeadCfg(num_convs=2, in_channels=C, conv_out_channels=8, num_classes=NUM_CLASSES))
    out = head(tf.zeros([2, 5, 14, 14, C]))
    assert out.shape == (2, 5, 28, 28, NUM_CLASSES) and out.dtype == tf.float32
    # Default: 4 × (3·3·256·256 + 256) + (2·2·256·256 + 256) + (256·80 + 80).
    default = FCNMaskHead(MaskHeadCfg())
    default.build()
    assert count(default) == 4 * 590_080 + 262_400 + 20_560 == 2_643_280
    # torchvision at 91 classes (its channel 0 is background) = ours at 90 + one logits channel.
    tv = sum(p.numel() for m in (MaskRCNNHeads(256, [256] * 4, 1), MaskRCNNPredictor(256, 256, 91))
             for p in m.parameters())
    ours90 = FCNMaskHead(MaskHeadCfg(num_classes=90))
    ours90.build()
    assert tv == count(ours90) + 256 + 1


def test_mask_head_matches_torchvision():
    torch.manual_seed(0)
    tv_convs, tv_pred = MaskRCNNHeads(8, [16] * 4, 1).eval(), MaskRCNNPredictor(16, 16, 6).eval()
    head = FCNMaskHead(MaskHeadCfg(num_convs=4, in_channels=8, conv_out_channels=16, num_classes=5))
    head.build()
    conv = lambda w: w.detach().permute(2, 3, 1, 0).numpy()  # (O, I, kh, kw) → (kh, kw, I, O)
    for i, layer in enumerate(head.convs):
        layer.set_weights([conv(tv_convs[i][0].weight), tv_convs[i][0].bias.detach().numpy()])
    # ConvTranspose (I, O, kh, kw) → Conv2DTranspose (kh, kw, O, I): the same permutation.
    head.upsample.set_weights([conv(tv_pred.conv5_mask.weight), tv_pred.conv5_mask.bias.detach().numpy()])
    # torchvision's channel 0 is background; ours starts at class 1.
    logits = tv_pred.mask_fcn_logits
    head.conv_logits.set_weights([conv(logits.weight[1:]), logits.bias[1:].detach().numpy()])
    x = np.random.default_rng(1).normal(size=(2, 3, 14, 14, 8)).astype(np.float32)
    with torch.no_grad():
        expected = tv_pred(tv_convs(torch.from_numpy(x.reshape(6, 14, 14, 8)).permute(0, 3, 1, 2)))
    expected = expected[:, 1:].permute(0, 2, 3, 1).numpy().reshape(2, 3, 28, 28, 5)
    np.testing.assert_allclose(head(tf.constant(x)).numpy(), expected, atol=1e-4)


def test_bbox_head_matches_torchvision():
    torch.manual_seed(0)
    s, c, fc = 7, 8, 32
    tv_head, tv_pred = TwoMLPHead(c * s * s, fc).eval(), FastRCNNPredictor(fc, 6).eval()
    head = Shared2FCBBoxHead(BBoxHeadCfg(in_channels=c, fc_out_channels=fc, num_classes=5))
    head.build()
    # fc6 reads NCHW-flattened features (index c·49 + y·7 + x); ours reads NHWC ((y·7 + x)·C + c).
    fc6 = tv_head.fc6.weight.detach().reshape(fc, c, s, s).permute(2, 3, 1, 0).reshape(s * s * c, fc).numpy()
    head.shared_fcs[0].set_weights([fc6, tv_head.fc6.bias.detach().numpy()])
    head.shared_fcs[1].set_weights([tv_head.fc7.weight.detach().T.numpy(), tv_head.fc7.bias.detach().numpy()])
    head.fc_cls.set_weights([tv_pred.cls_score.weight.detach().T.numpy(), tv_pred.cls_score.bias.detach().numpy()])
    # bbox_pred's first 4 rows regress the background class, which we do not have.
    head.fc_reg.set_weights([tv_pred.bbox_pred.weight.detach()[4:].T.numpy(),
                             tv_pred.bbox_pred.bias.detach()[4:].numpy()])
    x = np.random.default_rng(2).normal(size=(1, 10, s, s, c)).astype(np.float32)
    with torch.no_grad():
        cls, reg = tv_pred(tv_head(torch.from_numpy(x[0]).permute(0, 3, 1, 2)))
    ours_cls, ours_reg = head(tf.constant(x))
    np.testing.assert_allclose(ours_cls.numpy()[0], cls.numpy(), atol=1e-4)
    np.testing.assert_allclose(ours_reg.numpy()[0], reg.numpy().reshape(10, 6, 4)[:, 1:], atol=1e-4)
