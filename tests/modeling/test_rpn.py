"""Tests for tfrcnn.modeling.rpn: layout, hand-computed losses and proposals, torchvision parity, properties."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection import rpn as tv_rpn

from tfrcnn.config import ProposalCfg, RPNHeadCfg, RPNTrainCfg
from tfrcnn.modeling.rpn import RPNHead, anchor_inside_flags
from tfrcnn.ops.boxes import encode_boxes

SEED = tf.constant([1, 2], tf.int32)


def _head_cfg(channels=8, strides=(16,), scales=(1.0,), ratios=(1.0,), **kw):
    d = {"in_channels": channels, "feat_channels": channels,
         "anchor_generator": {"strides": list(strides), "scales": list(scales), "ratios": list(ratios)}}
    d.update(kw)
    return RPNHeadCfg.from_dict(d)


def _train_cfg(num=4, pos_fraction=0.5, allowed_border=-1, pos_weight=-1.0, **assigner):
    return RPNTrainCfg.from_dict({"assigner": assigner, "allowed_border": allowed_border, "pos_weight": pos_weight,
                                  "sampler": {"num": num, "pos_fraction": pos_fraction}})


# ---------------------------------------------------------------------------------------------------
# A hand-made case: one level of stride 16, one 16×16 anchor per location (scale 1, ratio 1), a 32×32
# input → a 2×2 feature map → 4 anchors, centres (0, 0), (0, 16), (16, 0), (16, 16):
#   a0 [-8, -8, 8, 8]   a1 [-8, 8, 8, 24]   a2 [8, -8, 24, 8]   a3 [8, 8, 24, 24]
# gt [8, 8, 24, 26] (h 16, w 18) overlaps a3 only: inter 16·16 = 256, union 256 + 288 - 256 = 288,
# IoU 0.889 ≥ 0.7 → a3 positive; a0..a2 touch it along an edge at most (IoU 0) → negative.
# num = 4 slots: 1 positive + 3 negatives, every candidate sampled whatever the seed; count = 4.
# ---------------------------------------------------------------------------------------------------
IMAGE = (32, 32)
ANCHORS = [[-8., -8., 8., 8.], [-8., 8., 8., 24.], [8., -8., 24., 8.], [8., 8., 24., 24.]]
GT = [8., 8., 24., 26.]
LOGITS = [2.0, -1.0, 0.0, 1.0]
# BCE from logits: label 1: log(1 + e^-z); label 0: log(1 + e^z).
#   a0 (neg, z=2):  log(1 + e^2)  = 2.126928
#   a1 (neg, z=-1): log(1 + e^-1) = 0.313262
#   a2 (neg, z=0):  log 2         = 0.693147
#   a3 (pos, z=1):  log(1 + e^-1) = 0.313262
BCE = [math.log1p(math.exp(2)), math.log1p(math.exp(-1)), math.log(2), math.log1p(math.exp(-1))]
# Predicted deltas (dx, dy, dw, dh); only a3's count. Its target: gt centre (16, 17), size (16, 18);
# anchor centre (16, 16), size (16, 16): dx = (17 - 16) / 16 = 0.0625, dy = 0, dw = log(18 / 16) = 0.117783, dh = 0.
DELTAS = [[5., 5., 5., 5.], [-3., 1., 2., 0.], [1., 1., 1., 1.], [0.1, -0.2, 0.3, 0.05]]
TARGET = [0.0625, 0.0, math.log(18 / 16), 0.0]
# |pred - target| = 0.0375, 0.2, 0.182217, 0.05
DIFF = [abs(p - t) for p, t in zip(DELTAS[3], TARGET)]
L1 = sum(DIFF)  # 0.469717
# SmoothL1 with beta = 1/9: 0.5 d² / beta below beta, d - beta / 2 above:
#   0.0375 → 0.5 · 0.00140625 · 9 = 0.006328;  0.2 → 0.2 - 0.055556 = 0.144444;
#   0.182217 → 0.126661;  0.05 → 0.5 · 0.0025 · 9 = 0.01125;  sum 0.288684
BETA = 1 / 9
SMOOTH_L1 = sum(0.5 * d * d / BETA if d < BETA else d - 0.5 * BETA for d in DIFF)


def _hand_losses(head_kw=None, train_kw=None, gt=(GT,), classes=(1,), batch_extra=None, ignore=None,
                 image_size=IMAGE):
    head = RPNHead(_head_cfg(**(head_kw or {})), _train_cfg(**(train_kw or {})))
    anchors = head.anchors(IMAGE, [tf.zeros([1, 2, 2, 8])])
    np.testing.assert_array_equal(anchors[0], ANCHORS)
    logits, deltas = [tf.constant([LOGITS])], [tf.constant([DELTAS])]
    gt_boxes, gt_classes = tf.constant([gt], tf.float32), tf.constant([classes], tf.int32)
    sizes = tf.constant([image_size], tf.int32)
    if batch_extra is not None:  # a second image: (gt, classes)
        logits, deltas = [tf.concat([logits[0]] * 2, 0)], [tf.concat([deltas[0]] * 2, 0)]
        gt_boxes = tf.concat([gt_boxes, tf.constant([batch_extra[0]], tf.float32)], 0)
        gt_classes = tf.concat([gt_classes, tf.constant([batch_extra[1]], tf.int32)], 0)
        sizes = tf.concat([sizes, sizes], 0)
    if ignore is not None:
        ignore = tf.constant(ignore, tf.float32)
    out = head.loss_terms(logits, deltas, anchors, gt_boxes, gt_classes, ignore, sizes, SEED)
    return {k: (float(s), float(c)) for k, (s, c) in out.items()}


def test_hand_computed_bce_and_l1():
    out = _hand_losses()
    assert out["rpn_cls"][1] == out["rpn_bbox"][1] == 4.0
    np.testing.assert_allclose(out["rpn_cls"][0], sum(BCE), rtol=1e-6)  # 3.446599
    np.testing.assert_allclose(out["rpn_bbox"][0], L1, rtol=1e-5)


def test_smooth_l1_and_loss_weights():
    out = _hand_losses(head_kw={"loss_bbox": {"type": "SmoothL1Loss", "beta": BETA, "loss_weight": 3.0},
                                "loss_cls": {"use_sigmoid": True, "loss_weight": 2.0}})
    np.testing.assert_allclose(out["rpn_bbox"][0], 3.0 * SMOOTH_L1, rtol=1e-5)  # 3 · 0.288684
    np.testing.assert_allclose(out["rpn_cls"][0], 2.0 * sum(BCE), rtol=1e-6)
    assert out["rpn_cls"][1] == out["rpn_bbox"][1] == 4.0  # weights scale sums, not counts


def test_pos_weight_scales_positive_cls_loss_only():
    out = _hand_losses(train_kw={"pos_weight": 3.0})
    # a3 is the positive: 3 · 0.313262 + the three negatives.
    np.testing.assert_allclose(out["rpn_cls"][0], sum(BCE[:3]) + 3.0 * BCE[3], rtol=1e-6)
    np.testing.assert_allclose(out["rpn_bbox"][0], L1, rtol=1e-5)
    # pos_weight <= 0 means weight 1 (MMDetection).
    np.testing.assert_allclose(_hand_losses(train_kw={"pos_weight": 0.0})["rpn_cls"][0], sum(BCE), rtol=1e-6)


def test_image_without_gt_and_batch_without_positive():
    # Image 2 has only padding (class 0; its box is garbage that must be ignored): 4 negatives, count 4 more.
    out = _hand_losses(batch_extra=([[1., 2., 3., 4.]], [0]))
    np.testing.assert_allclose(out["rpn_cls"][0], sum(BCE) + sum(BCE[:3]) + math.log1p(math.exp(1)), rtol=1e-6)
    assert out["rpn_cls"][1] == 8.0
    np.testing.assert_allclose(out["rpn_bbox"][0], L1, rtol=1e-5)
    # A gt far from every anchor: IoU 0 < min_pos_iou, so no positive at all, every anchor negative.
    out = _hand_losses(gt=([30., 30., 31., 31.],), batch_extra=([[0., 0., 0., 0.]], [0]))
    assert out["rpn_bbox"][0] == 0.0 and out["rpn_bbox"][1] == 8.0
    np.testing.assert_allclose(out["rpn_cls"][0], 2 * (sum(BCE[:3]) + math.log1p(math.exp(1))), rtol=1e-6)


def test_allowed_border_excludes_anchors_outside_the_image():
    # allowed_border 0 on 32×32: a0..a2 start at -8 → outside; a3 [8, 8, 24, 24] stays: only it is sampled.
    out = _hand_losses(train_kw={"allowed_border": 0})
    assert out["rpn_cls"][1] == 1.0
    np.testing.assert_allclose(out["rpn_cls"][0], BCE[3], rtol=1e-6)
    # 8 px allowed: -8 >= -8 and 24 < 32 + 8 → all four; -1 uses all anchors too.
    assert _hand_losses(train_kw={"allowed_border": 8})["rpn_cls"][1] == 4.0
    assert _hand_losses(train_kw={"allowed_border": -1})["rpn_cls"][1] == 4.0
    # The right/bottom bound is strict (MMDetection): image 24 × 32 and border 0 drop a3 too (y2 = 24 < 24 fails).
    assert _hand_losses(train_kw={"allowed_border": 0}, image_size=(24, 32))["rpn_cls"][1] == 0.0


def test_anchor_inside_flags_per_image():
    flags = anchor_inside_flags(tf.constant(ANCHORS), tf.constant([[32, 32], [32, 24]]), 0)
    np.testing.assert_array_equal(flags, [[False, False, False, True], [False, False, False, False]])


def test_ignore_regions():
    # An ignore box equal to a0 (IoF 1 > 0.5) removes a0 from the samples; an all-zero padding row ignores nothing.
    ignore = [[[-8., -8., 8., 8.], [0., 0., 0., 0.]]]
    out = _hand_losses(train_kw={"ignore_iof_thr": 0.5}, ignore=ignore)
    assert out["rpn_cls"][1] == 3.0
    np.testing.assert_allclose(out["rpn_cls"][0], sum(BCE[1:]), rtol=1e-6)
    # With ignore_iof_thr -1 (the default) ignore boxes are not used.
    assert _hand_losses(ignore=ignore)["rpn_cls"][1] == 4.0
    assert _hand_losses(train_kw={"ignore_iof_thr": 0.5}, ignore=[[[0., 0., 0., 0.]]])["rpn_cls"][1] == 4.0


def test_use_sigmoid_false_is_rejected():
    with pytest.raises(ValueError, match="sigmoid"):
        RPNHead(_head_cfg(loss_cls={"use_sigmoid": False}), _train_cfg())


def test_losses_need_train_cfg():
    head = RPNHead(_head_cfg(), None)
    with pytest.raises(ValueError, match="train_cfg"):
        head.loss_terms([tf.zeros([1, 4])], [tf.zeros([1, 4, 4])], [tf.constant(ANCHORS)], tf.zeros([1, 1, 4]),
                    tf.zeros([1, 1], tf.int32), None, tf.constant([IMAGE]), SEED)


# ---------------------------------------------------------------------------------------------------
# Layers: layout, parameter count, config
# ---------------------------------------------------------------------------------------------------

def test_parameter_count_matches_torchvision():
    head = RPNHead(_head_cfg(channels=256, strides=(4, 8, 16, 32, 64), scales=(8.0,), ratios=(0.5, 1.0, 2.0)))
    head.build()
    # conv 3·3·256·256 + 256 = 590,080; cls 256·3 + 3 = 771; reg 256·12 + 12 = 3,084.
    assert head.count_params() == 593_935
    assert head.count_params() == sum(p.numel() for p in tv_rpn.RPNHead(256, 3).parameters())
    assert [w.path for w in head.weights] == [f"rpn_head/{l}/{v}" for l in ("rpn_conv", "rpn_cls", "rpn_reg")
                                              for v in ("kernel", "bias")]


def test_output_order_matches_anchor_order():
    # rpn_conv is the identity at its centre tap (features are >= 0, so the ReLU keeps them); rpn_cls and rpn_reg
    # copy input channel 0 to every output and add bias = the channel index. Channel 0 encodes (b, h, w).
    c, num_a, stride = 4, 3, 8
    head = RPNHead(_head_cfg(channels=c, strides=(stride,), scales=(2.0,), ratios=(0.5, 1.0, 2.0)))
    head.build()
    conv = np.zeros((3, 3, c, c), np.float32)
    conv[1, 1] = np.eye(c)
    head.rpn_conv.set_weights([conv, np.zeros(c, np.float32)])
    for layer, outputs in ((head.rpn_cls, num_a), (head.rpn_reg, 4 * num_a)):
        kernel = np.zeros((1, 1, c, outputs), np.float32)
        kernel[0, 0, 0] = 1.0
        layer.set_weights([kernel, np.arange(outputs, dtype=np.float32)])
    b_, h_, w_ = 2, 3, 5
    code = 10000 * np.arange(b_)[:, None, None] + 100 * (np.arange(h_)[:, None] * w_ + np.arange(w_))[None]
    feats = np.zeros((b_, h_, w_, c), np.float32)
    feats[..., 0] = code
    (logits,), (deltas,) = head([tf.constant(feats)])
    anchors = head.anchors((h_ * stride, w_ * stride), [feats])[0].numpy()
    assert logits.shape == (b_, h_ * w_ * num_a) and deltas.shape == (b_, h_ * w_ * num_a, 4)
    base = head.anchor_generator.base_anchors(0)
    for b in range(b_):
        for h in range(h_):
            for w in range(w_):
                for a in range(num_a):
                    i = (h * w_ + w) * num_a + a
                    assert logits[b, i] == code[b, h, w] + a
                    np.testing.assert_array_equal(deltas[b, i], code[b, h, w] + a * 4 + np.arange(4))
                    np.testing.assert_allclose(anchors[i], base[a] + [h * stride, w * stride] * 2)


def test_outputs_match_torchvision_rpn_head():
    tv = tv_rpn.RPNHead(8, 3).eval()
    head = RPNHead(_head_cfg(channels=8, strides=(4, 8), scales=(8.0,), ratios=(0.5, 1.0, 2.0)))
    head.build()
    for layer, module in ((head.rpn_conv, tv.conv[0][0]), (head.rpn_cls, tv.cls_logits), (head.rpn_reg, tv.bbox_pred)):
        torch.nn.init.normal_(module.weight, std=0.3)
        torch.nn.init.normal_(module.bias, std=0.3)
        layer.set_weights([module.weight.detach().numpy().transpose(2, 3, 1, 0), module.bias.detach().numpy()])
    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(2, s, s + 1, 8)).astype(np.float32) for s in (6, 3)]
    logits, deltas = head([tf.constant(f) for f in feats])
    with torch.no_grad():
        ref_cls, ref_reg = tv_rpn.concat_box_prediction_layers(*tv([torch.from_numpy(f.transpose(0, 3, 1, 2))
                                                                     for f in feats]))
    np.testing.assert_allclose(tf.concat(logits, 1).numpy().reshape(-1), ref_cls.numpy().reshape(-1), atol=1e-5)
    np.testing.assert_allclose(tf.concat(deltas, 1).numpy().reshape(-1, 4), ref_reg.numpy(), atol=1e-5)


def test_initialization():
    head = RPNHead(_head_cfg(channels=64))
    head.build()
    for layer in (head.rpn_conv, head.rpn_cls, head.rpn_reg):
        kernel, bias = layer.get_weights()
        assert np.all(bias == 0)
    np.testing.assert_allclose(np.std(head.rpn_conv.get_weights()[0]), 0.01, rtol=0.05)


def test_config_round_trip_and_channel_check():
    cfg = _head_cfg(channels=16, strides=(4, 8), loss_bbox={"type": "SmoothL1Loss", "beta": 0.5})
    head = RPNHead(cfg, _train_cfg(num=64, allowed_border=0))
    clone = RPNHead.from_config(head.get_config())
    assert clone.name == "rpn_head" and clone.cfg == cfg and clone.train_cfg == head.train_cfg
    assert RPNHead.from_config(RPNHead(cfg, None).get_config()).train_cfg is None
    with pytest.raises(ValueError, match="in_channels"):
        clone([tf.zeros([1, 4, 4, 8])])


def test_keras_model_losses_property_still_works():
    # RPNHead's losses are loss_terms: Layer.losses, the add_loss list a Model collects, stays Keras' own.
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.head = RPNHead(_head_cfg())

        def call(self, x):
            return self.head([x])

    net = Net()
    net(tf.zeros([1, 2, 2, 8]))
    assert net.losses == []


def test_mixed_bfloat16_outputs_float32():
    head = RPNHead(_head_cfg(), _train_cfg(), dtype="mixed_bfloat16")
    feats = [tf.random.normal([1, 2, 2, 8], seed=1)]
    logits, deltas = head(feats)
    assert head.rpn_conv.compute_dtype == "bfloat16" and head.rpn_conv.kernel.dtype == "float32"
    assert logits[0].dtype == tf.float32 and deltas[0].dtype == tf.float32
    out = head.loss_terms(logits, deltas, head.anchors(IMAGE, feats), tf.constant([[GT]]), tf.constant([[1]]),
                      None, tf.constant([IMAGE]), SEED)
    assert all(np.isfinite(float(v)) for pair in out.values() for v in pair)


# ---------------------------------------------------------------------------------------------------
# Full pipeline: gradients and tf.function
# ---------------------------------------------------------------------------------------------------

def _pipeline_head():
    cfg = _head_cfg(channels=8, strides=(4, 8, 16), scales=(4.0,), ratios=(0.5, 1.0, 2.0))
    return RPNHead(cfg, _train_cfg(num=32, pos_fraction=0.5))


def _pipeline_inputs():
    feats = [tf.random.stateless_normal([2, 64 // s, 64 // s, 8], [s, 0]) for s in (4, 8, 16)]
    gt = tf.constant([[[10., 12., 40., 30.], [0., 0., 0., 0.]], [[5., 5., 60., 60.], [30., 2., 50., 20.]]])
    classes = tf.constant([[3, 0], [1, 2]])
    return feats, gt, classes, tf.constant([[64, 64], [56, 48]])


def test_gradients_reach_every_weight_and_tf_function_matches_eager():
    head = _pipeline_head()
    feats, gt, classes, sizes = _pipeline_inputs()
    proposal_cfg = ProposalCfg(nms_pre=50, max_per_img=20, nms_thr=0.7)

    def step(feats, gt, classes, sizes, seed):
        with tf.GradientTape() as tape:
            logits, deltas = head(feats)
            anchors = head.anchors((64, 64), feats)
            losses = head.loss_terms(logits, deltas, anchors, gt, classes, None, sizes, seed)
            total = sum(s / tf.maximum(c, 1.0) for s, c in losses.values())
        grads = tape.gradient(total, head.trainable_weights)
        proposals = head.get_proposals(logits, deltas, anchors, sizes, proposal_cfg)
        return losses, grads, proposals

    eager = step(feats, gt, classes, sizes, SEED)
    graph = tf.function(step, autograph=False)(feats, gt, classes, sizes, SEED)
    assert eager[0]["rpn_bbox"][0] > 0  # there are positives
    for g, w in zip(eager[1], head.trainable_weights):
        assert g is not None and np.all(np.isfinite(g)) and np.any(g != 0), w.path
    for a, b in zip(tf.nest.flatten(eager), tf.nest.flatten(graph)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    proposals, scores, valid = graph[2]
    assert proposals.shape == (2, 20, 4) and scores.shape == (2, 20) and valid.shape == (2, 20)


def test_losses_compile_with_xla():
    head = _pipeline_head()
    feats, gt, classes, sizes = _pipeline_inputs()
    logits, deltas = head(feats)
    anchors = head.anchors((64, 64), feats)

    def losses(logits, deltas, gt, classes, sizes, seed):
        return head.loss_terms(logits, deltas, anchors, gt, classes, None, sizes, seed)

    xla = tf.function(losses, jit_compile=True)(logits, deltas, gt, classes, sizes, SEED)
    for a, b in zip(tf.nest.flatten(xla), tf.nest.flatten(losses(logits, deltas, gt, classes, sizes, SEED))):
        np.testing.assert_allclose(a, b, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# get_proposals
# ---------------------------------------------------------------------------------------------------

def test_proposals_hand_case_and_min_bbox_size():
    # Zero deltas: proposals are the anchors clipped to 32×32:
    #   a0 [0, 0, 8, 8] (8×8), a1 [0, 8, 8, 24] (h 8, w 16), a2 [8, 0, 24, 8] (h 16, w 8), a3 [8, 8, 24, 24] (16×16).
    # They do not overlap (IoU 0): NMS keeps all. Logits 0, 1, 2, 3 rank a3, a2, a1, a0.
    head = RPNHead(_head_cfg())
    anchors = [tf.constant(ANCHORS)]
    logits, deltas = [tf.constant([[0., 1., 2., 3.]])], [tf.zeros([1, 4, 4])]
    props, scores, valid = head.get_proposals(logits, deltas, anchors, tf.constant([IMAGE]),
                                              ProposalCfg(nms_pre=10, max_per_img=5, min_bbox_size=7.9))
    np.testing.assert_array_equal(props[0], [[8, 8, 24, 24], [8, 0, 24, 8], [0, 8, 8, 24], [0, 0, 8, 8], [0] * 4])
    np.testing.assert_allclose(scores[0, :4], 1 / (1 + np.exp(-np.array([3., 2., 1., 0.]))), rtol=1e-6)
    np.testing.assert_array_equal(valid[0], [True] * 4 + [False])
    # min_bbox_size 8 keeps boxes with w > 8 and h > 8 only (MMDetection's strict rule): a3.
    props, _, valid = head.get_proposals(logits, deltas, anchors, tf.constant([IMAGE]),
                                         ProposalCfg(nms_pre=10, max_per_img=5, min_bbox_size=8.0))
    np.testing.assert_array_equal(valid[0], [True, False, False, False, False])
    np.testing.assert_array_equal(props[0, 0], [8, 8, 24, 24])
    # nms_pre 2: only the two best of the level (a3, a2) reach NMS.
    _, _, valid = head.get_proposals(logits, deltas, anchors, tf.constant([IMAGE]),
                                     ProposalCfg(nms_pre=2, max_per_img=5))
    np.testing.assert_array_equal(valid[0], [True, True, False, False, False])


def test_top_proposal_is_the_encoded_gt():
    head = _pipeline_head()
    feats, _, _, _ = _pipeline_inputs()
    anchors = head.anchors((64, 64), feats)
    rng = np.random.default_rng(0)
    logits = [tf.constant(rng.normal(-4, 1, size=(2, a.shape[0])), tf.float32) for a in anchors]
    deltas = [tf.constant(rng.normal(0, 0.1, size=(2, a.shape[0], 4)), tf.float32) for a in anchors]
    gt = np.array([[12.3, 7.1, 33.9, 29.4], [2.0, 30.5, 20.0, 47.0]], np.float32)
    # Image b: the gt's best anchor is anchor 40 of level 1 (b = 0) / anchor 5 of level 2 (b = 1).
    for b, (level, i) in enumerate([(1, 40), (2, 5)]):
        target = encode_boxes(gt[b], anchors[level][i]).numpy()
        deltas[level] = tf.tensor_scatter_nd_update(deltas[level], [[b, i]], [target])
        logits[level] = tf.tensor_scatter_nd_update(logits[level], [[b, i]], [5.0])
    sizes = tf.constant([[64, 64], [40, 50]])
    cfg = ProposalCfg(nms_pre=30, max_per_img=25, nms_thr=0.7)
    # Config dataclasses are not hashable, so they are closed over rather than passed to the tf.function.
    props, scores, valid = tf.function(lambda *args: head.get_proposals(*args, cfg))(logits, deltas, anchors, sizes)
    assert props.shape == (2, 25, 4) and scores.shape == (2, 25) and valid.shape == (2, 25)
    np.testing.assert_allclose(props[:, 0], gt, atol=1e-4)
    np.testing.assert_allclose(scores[:, 0], 1 / (1 + math.exp(-5)), rtol=1e-6)
    # Clipped to each image's own size.
    limits = np.array([[64, 64, 64, 64], [40, 50, 40, 50]], np.float32)[:, None]
    assert np.all(props.numpy() >= 0) and np.all(props.numpy() <= limits)
    assert np.all(np.diff(scores.numpy(), axis=1)[valid.numpy()[:, 1:]] <= 0)


def test_call_and_proposals_with_dynamic_shapes():
    # At inference the image size may be unknown at trace time: N_l is then dynamic, the outputs stay static.
    head = _pipeline_head()
    feats, _, _, sizes = _pipeline_inputs()
    cfg = ProposalCfg(nms_pre=50, max_per_img=20)
    spec = [tf.TensorSpec([None, None, None, 8])] * 3

    @tf.function(input_signature=[spec, tf.TensorSpec([None, 2], tf.int32), [tf.TensorSpec([None, 4])] * 3])
    def propose(feats, sizes, anchors):
        logits, deltas = head(feats)
        assert logits[0].shape.as_list() == [None, None] and deltas[0].shape.as_list() == [None, None, 4]
        return head.get_proposals(logits, deltas, anchors, sizes, cfg)

    anchors = head.anchors((64, 64), feats)
    dynamic = propose(feats, sizes, anchors)
    logits, deltas = head(feats)
    for a, b in zip(dynamic, head.get_proposals(logits, deltas, anchors, sizes, cfg)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def _xyxy(boxes):
    return torch.from_numpy(np.asarray(boxes)[..., [1, 0, 3, 2]].copy())


def test_proposals_match_torchvision_filter_proposals():
    # torchvision: decode (clamp above), per-level top-k, clip, drop w or h < 1e-3, NMS 0.7 per level, top-k.
    head = RPNHead(_head_cfg(channels=8, strides=(4, 8, 16), scales=(4.0,), ratios=(0.5, 1.0, 2.0),
                             bbox_coder={"delta_clamp": "above"}))
    feats, _, _, sizes = _pipeline_inputs()
    anchors = head.anchors((64, 64), feats)
    rng = np.random.default_rng(1)
    logits = [rng.normal(size=(2, a.shape[0])).astype(np.float32) for a in anchors]
    deltas = [rng.normal(0, 0.5, size=(2, a.shape[0], 4)).astype(np.float32) for a in anchors]
    k_pre, k_post = 40, 30
    props, scores, valid = head.get_proposals([tf.constant(t) for t in logits], [tf.constant(t) for t in deltas],
                                              anchors, sizes,
                                              ProposalCfg(nms_pre=k_pre, max_per_img=k_post, min_bbox_size=1e-3))
    tv = tv_rpn.RegionProposalNetwork(None, None, 0.7, 0.3, 256, 0.5, dict(training=k_pre, testing=k_pre),
                                      dict(training=k_post, testing=k_post), 0.7).eval()
    all_anchors = _xyxy(tf.concat(anchors, 0).numpy())
    tv_deltas = torch.from_numpy(np.concatenate(deltas, 1).reshape(-1, 4))
    decoded = tv.box_coder.decode(tv_deltas, [all_anchors] * 2).view(2, -1, 4)
    boxes, tv_scores = tv.filter_proposals(decoded, torch.from_numpy(np.concatenate(logits, 1)),
                                           [tuple(s) for s in sizes.numpy().tolist()], [a.shape[0] for a in anchors])
    for b in range(2):
        n = len(boxes[b])
        assert valid[b].numpy().sum() == n
        np.testing.assert_allclose(props[b, :n].numpy()[:, [1, 0, 3, 2]], boxes[b].numpy(), atol=1e-4)
        np.testing.assert_allclose(scores[b, :n], tv_scores[b].numpy(), rtol=1e-6)


def test_losses_match_torchvision_when_every_anchor_is_sampled():
    # num = all anchors and pos_fraction 1 sample every positive and negative, in both libraries.
    head_cfg = _head_cfg(channels=8, strides=(4, 8, 16), scales=(4.0,), ratios=(0.5, 1.0, 2.0),
                         loss_bbox={"type": "SmoothL1Loss", "beta": 1 / 9})
    feats, gt, classes, sizes = _pipeline_inputs()
    head = RPNHead(head_cfg)
    anchors = head.anchors((64, 64), feats)
    n = sum(a.shape[0] for a in anchors)
    head.train_cfg = _train_cfg(num=n, pos_fraction=1.0)
    rng = np.random.default_rng(2)
    logits = [rng.normal(size=(2, a.shape[0])).astype(np.float32) for a in anchors]
    deltas = [rng.normal(0, 0.5, size=(2, a.shape[0], 4)).astype(np.float32) for a in anchors]
    out = head.loss_terms([tf.constant(t) for t in logits], [tf.constant(t) for t in deltas], anchors, gt, classes,
                      None, sizes, SEED)
    tv = tv_rpn.RegionProposalNetwork(None, None, 0.7, 0.3, n, 1.0, dict(training=1, testing=1),
                                      dict(training=1, testing=1), 0.7)
    all_anchors = _xyxy(tf.concat(anchors, 0).numpy())
    targets = [{"boxes": _xyxy(gt[b].numpy()[classes[b].numpy() > 0])} for b in range(2)]
    labels, matched = tv.assign_targets_to_anchors([all_anchors] * 2, targets)
    reg_targets = [tv.box_coder.encode_single(m, all_anchors) for m in matched]
    ref_cls, ref_box = tv.compute_loss(torch.from_numpy(np.concatenate(logits, 1)),
                                       torch.from_numpy(np.concatenate(deltas, 1).reshape(-1, 4)), labels, reg_targets)
    assert out["rpn_cls"][1] == sum(int((l >= 0).sum()) for l in labels)
    np.testing.assert_allclose(out["rpn_cls"][0] / out["rpn_cls"][1], ref_cls.item(), rtol=1e-5)
    np.testing.assert_allclose(out["rpn_bbox"][0] / out["rpn_bbox"][1], ref_box.item(), rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------

_HEAD = _pipeline_head()
_FEATS = _pipeline_inputs()[0]
_ANCHORS = _HEAD.anchors((64, 64), _FEATS)
_LOGITS, _DELTAS = _HEAD(_FEATS)

coord = st.floats(0, 64, width=32)


@settings(max_examples=10, deadline=None)
@given(boxes=st.lists(st.tuples(coord, coord, coord, coord), min_size=2, max_size=2),
       present=st.lists(st.booleans(), min_size=2, max_size=2), seed=st.integers(0, 2 ** 31 - 1),
       border=st.sampled_from([-1, 0, 16]))
def test_loss_counts_and_finiteness(boxes, present, seed, border):
    gt = np.array([[min(y1, y2), min(x1, x2), max(y1, y2), max(x1, x2)] for y1, x1, y2, x2 in boxes], np.float32)
    _HEAD.train_cfg = _train_cfg(num=32, pos_fraction=0.25, allowed_border=border)
    out = _HEAD.loss_terms(_LOGITS, _DELTAS, _ANCHORS, tf.constant(gt[None].repeat(2, 0)),
                       tf.constant([present, [True, False]], tf.int32), None, tf.constant([[64, 64], [48, 40]]),
                       tf.constant([seed, 7]))
    (cls_sum, cls_count), (bbox_sum, bbox_count) = [[float(v) for v in out[k]] for k in ("rpn_cls", "rpn_bbox")]
    assert np.isfinite([cls_sum, bbox_sum]).all() and cls_sum > 0 and bbox_sum >= 0
    assert cls_count == bbox_count and 0 < cls_count <= 2 * 32


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), h=st.integers(8, 64), w=st.integers(8, 64),
       min_size=st.sampled_from([0.0, 4.0]), across=st.booleans())
def test_proposal_properties(seed, h, w, min_size, across):
    logits = [t + tf.random.stateless_normal(tf.shape(t), [seed, 0]) for t in _LOGITS]
    deltas = [tf.random.stateless_normal(tf.shape(t), [seed, 1]) for t in _DELTAS]
    props, scores, valid = _HEAD.get_proposals(
        logits, deltas, _ANCHORS, tf.constant([[h, w], [64, 64]]),
        ProposalCfg(nms_pre=20, max_per_img=30, min_bbox_size=min_size, nms_across_levels=across))
    props, scores, valid = props.numpy(), scores.numpy(), valid.numpy()
    assert props.shape == (2, 30, 4)
    limits = np.array([[h, w, h, w], [64, 64, 64, 64]], np.float32)[:, None]
    assert np.all(props >= 0) and np.all(props <= limits)
    hs, ws = props[..., 2] - props[..., 0], props[..., 3] - props[..., 1]
    assert np.all((hs > min_size) & (ws > min_size) | ~valid)
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.all(valid[:, :-1] >= valid[:, 1:])  # padding last
    assert 0 < valid.sum(1).min() and valid.sum(1).max() <= 30
