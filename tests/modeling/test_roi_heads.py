import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.config import (BBoxHeadCfg, BBoxLossCfg, MaskHeadCfg, RCNNTestCfg, RCNNTrainCfg, RoIExtractorCfg,
                           RoIHeadCfg, RoILayerCfg, SamplerCfg)
from tfrcnn.modeling.heads import FCNMaskHead
from tfrcnn.modeling.roi_heads import StandardRoIHead
from tfrcnn.ops.roi_align import multilevel_roi_pool

C = 4  # FPN channels in the small heads
NUM_CLASSES = 3


def small_cfg(mask=True, agnostic=False, loss_bbox=None, roi_type="RoIAlign"):
    return RoIHeadCfg(
        bbox_roi_extractor=RoIExtractorCfg(roi_layer=RoILayerCfg(type=roi_type), out_channels=C),
        bbox_head=BBoxHeadCfg(in_channels=C, fc_out_channels=16, num_classes=NUM_CLASSES,
                              reg_class_agnostic=agnostic, loss_bbox=loss_bbox or BBoxLossCfg()),
        mask_roi_extractor=RoIExtractorCfg(roi_layer=RoILayerCfg(output_size=14), out_channels=C) if mask else None,
        mask_head=MaskHeadCfg(num_convs=2, in_channels=C, conv_out_channels=8, num_classes=NUM_CLASSES)
        if mask else None)


def features(batch=1, size=128, seed=0):
    """P2..P6 of a size × size padded input."""
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=(batch, size // s, size // s, C)), tf.float32) for s in (4, 8, 16, 32, 64)]


def controlled(head, cls_bias, reg_bias=None, mask_bias=None):
    """Zero every kernel, so each RoI's outputs are the final layers' biases whatever its features."""
    head.build()
    for v in head.trainable_weights:
        v.assign(tf.zeros_like(v))
    head.bbox_head.fc_cls.bias.assign(cls_bias)
    if reg_bias is not None:
        head.bbox_head.fc_reg.bias.assign(reg_bias)
    if mask_bias is not None:
        head.mask_head.conv_logits.bias.assign(mask_bias)
    return head


# ------------------------------------------------------------------------------------------------ losses

# One image, one gt of class 2: G = [0, 0, 32, 32] (y1, x1, y2, x2). Proposals: A = [0, 0, 32, 40] (IoU 1024 / 1280
# = 0.8: positive), B = [40, 40, 72, 72] (IoU 0: negative) and an invalid one. With the gt added as a proposal the
# candidates are G, A, B; num = 512 slots take them all: 2 positives (G, A), 1 negative (B).
GT = [[[0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 0.0, 0.0]]]  # second row: padding
GT_CLASSES = [[2, 0]]
PROPOSALS = [[[0.0, 0.0, 32.0, 40.0], [40.0, 40.0, 72.0, 72.0], [1.0, 1.0, 60.0, 60.0]]]
PROPOSALS_VALID = [[True, True, False]]
GT_MASKS = np.ones([1, 2, 16, 16], np.float32)  # the gt is its whole box
# Logits [0, 0, ln 2, 0] for every RoI: softmax = [1, 1, 2, 1] / 5.
CLS_BIAS = [0.0, 0.0, math.log(2.0), 0.0]
# Class-specific deltas: class 2 predicts (0.5, 0, 0, 0); the other classes predict 9s that must not be used.
REG_BIAS = [9.0] * 4 + [0.5, 0.0, 0.0, 0.0] + [9.0] * 4
# Mask logit ln 3 on class 2's channel (sigmoid 0.75); the other channels must not be used.
MASK_BIAS = [-5.0, math.log(3.0), -5.0]

# rcnn_cls: G and A have label 2, -ln(2/5) = ln 2.5 each; B is background, -ln(1/5) = ln 5. Three sampled RoIs.
EXPECTED_CLS = 2 * math.log(2.5) + math.log(5.0)
# rcnn_bbox targets (stds 0.1, 0.1, 0.2, 0.2): G on itself: 0. A → G: dx = (16 - 20) / 40 / 0.1 = -1, dy = 0,
# dw = ln(32 / 40) / 0.2 = 5 ln 0.8, dh = 0. L1 against (0.5, 0, 0, 0): G: 0.5; A: 1.5 + 0 + |5 ln 0.8| + 0.
DIFFS = [0.5, 1.5, -5 * math.log(0.8)]
EXPECTED_L1 = sum(DIFFS)
# mask: G's targets are 28 × 28 ones. A's bin centres x = (q + 0.5) · 40 / 28 lie inside G (x <= 32) for
# q <= 21: 22 columns of ones, 6 of zeros, all 28 rows. BCE at p = 0.75: ln(4/3) on a one, ln 4 on a zero.
EXPECTED_MASK = (784 + 28 * 22) * math.log(4 / 3) + 28 * 6 * math.log(4.0)


def hand_losses(head, function=False, **kwargs):
    args = dict(features=features(), proposals=tf.constant(PROPOSALS), proposals_valid=tf.constant(PROPOSALS_VALID),
                gt_boxes=tf.constant(GT), gt_classes=tf.constant(GT_CLASSES), gt_masks=tf.constant(GT_MASKS),
                ignore_boxes=None, seed=tf.constant([1, 2]))
    args.update(kwargs)
    losses = (tf.function(head.loss_terms) if function else head.loss_terms)(**args)
    return {k: (float(s), float(n)) for k, (s, n) in losses.items()}


def test_hand_computed_losses():
    head = controlled(StandardRoIHead(small_cfg()), CLS_BIAS, REG_BIAS, MASK_BIAS)
    losses = hand_losses(head)
    assert set(losses) == {"rcnn_cls", "rcnn_bbox", "mask"}
    np.testing.assert_allclose(losses["rcnn_cls"], (EXPECTED_CLS, 3), rtol=1e-5)
    np.testing.assert_allclose(losses["rcnn_bbox"], (EXPECTED_L1, 3), rtol=1e-5)
    np.testing.assert_allclose(losses["mask"], (EXPECTED_MASK, 2 * 28 * 28), rtol=1e-5)


def test_class_agnostic_regression():
    head = controlled(StandardRoIHead(small_cfg(agnostic=True)), CLS_BIAS, [0.5, 0.0, 0.0, 0.0], MASK_BIAS)
    assert head.bbox_head.fc_reg.kernel.shape == (16, 4)
    np.testing.assert_allclose(hand_losses(head)["rcnn_bbox"], (EXPECTED_L1, 3), rtol=1e-5)


def test_smooth_l1_loss_weights_and_pos_weight():
    cfg = small_cfg(loss_bbox=BBoxLossCfg(type="SmoothL1Loss", beta=1.0, loss_weight=2.0))
    cfg.bbox_head.loss_cls.loss_weight = 0.5
    head = controlled(StandardRoIHead(cfg, RCNNTrainCfg(pos_weight=3.0)), CLS_BIAS, REG_BIAS, MASK_BIAS)
    losses = hand_losses(head)
    # SmoothL1(beta 1): 0.5 d² below 1, d - 0.5 above: 0.5 → 0.125, 1.5 → 1.0, 1.1157 → 0.6157; × loss_weight 2.
    smooth = sum(0.5 * d * d if d < 1 else d - 0.5 for d in DIFFS)
    np.testing.assert_allclose(losses["rcnn_bbox"], (2.0 * smooth, 3), rtol=1e-5)
    # pos_weight 3 weighs the two positives' CE; the count stays the number of sampled RoIs; × loss_weight 0.5.
    np.testing.assert_allclose(losses["rcnn_cls"], (0.5 * (3 * 2 * math.log(2.5) + math.log(5.0)), 3), rtol=1e-5)


def test_ignore_regions_and_without_gt_as_proposals():
    # B lies inside an ignore region (IoF 1 > 0.5): it is no longer a negative.
    train = RCNNTrainCfg()
    train.assigner.ignore_iof_thr = 0.5
    head = controlled(StandardRoIHead(small_cfg(), train), CLS_BIAS, REG_BIAS, MASK_BIAS)
    losses = hand_losses(head, ignore_boxes=tf.constant([[[38.0, 38.0, 80.0, 80.0], [0.0, 0.0, 0.0, 0.0]]]))
    np.testing.assert_allclose(losses["rcnn_cls"], (2 * math.log(2.5), 2), rtol=1e-5)
    # Without the gt among the proposals only A is positive: one L1 term of 1.5 + |5 ln 0.8|, 2 sampled RoIs.
    train = RCNNTrainCfg(sampler=SamplerCfg(num=512, pos_fraction=0.25, add_gt_as_proposals=False))
    head = controlled(StandardRoIHead(small_cfg(), train), CLS_BIAS, REG_BIAS, MASK_BIAS)
    losses = hand_losses(head)
    np.testing.assert_allclose(losses["rcnn_bbox"], (DIFFS[1] + DIFFS[2], 2), rtol=1e-5)
    np.testing.assert_allclose(losses["mask"], (616 * math.log(4 / 3) + 168 * math.log(4.0), 784), rtol=1e-5)


def test_roi_pool_extractor():
    head = StandardRoIHead(small_cfg(roi_type="RoIPool"))
    feats, rois = features(), tf.constant(PROPOSALS)
    expected = multilevel_roi_pool(feats[:4], rois, 7, (4, 8, 16, 32), 56)
    np.testing.assert_array_equal(head.bbox_roi_extractor(feats, rois), expected)
    losses = hand_losses(head)
    assert all(np.isfinite(v).all() for v in losses.values())


def test_degenerate_batches_are_finite():
    head = StandardRoIHead(small_cfg())
    feats = features(batch=2)
    proposals = tf.constant(PROPOSALS * 2)
    valid = tf.constant(PROPOSALS_VALID * 2)
    masks = tf.constant(np.ones([2, 2, 16, 16], np.float32))
    # Image 1 has no gt at all (all padding).
    gt = tf.constant(GT + [[[0.0] * 4] * 2])
    with tf.GradientTape() as tape:
        losses = head.loss_terms(feats, proposals, valid, gt, tf.constant(GT_CLASSES + [[0, 0]]), masks, None, [3, 4])
        total = sum(s / tf.maximum(n, 1.0) for s, n in losses.values())
    grads = tape.gradient(total, head.trainable_weights)
    assert np.isfinite(float(total)) and all(np.isfinite(g.numpy()).all() for g in grads)
    assert float(losses["mask"][1]) == 2 * 784  # only image 0 has positives
    # No positive anywhere: box and mask sums are 0 with count 0 for the mask; CE still counts the negatives.
    with tf.GradientTape() as tape:
        losses = head.loss_terms(feats, proposals, valid, gt * 0, tf.zeros([2, 2], tf.int32), masks, None, [3, 4])
        total = sum(s / tf.maximum(n, 1.0) for s, n in losses.values())
    grads = tape.gradient(total, head.trainable_weights)
    assert all(np.isfinite(g.numpy()).all() for g in grads if g is not None)
    assert float(losses["rcnn_bbox"][0]) == 0.0 and float(losses["rcnn_bbox"][1]) == 4  # A, B in both images
    assert [float(x) for x in losses["mask"]] == [0.0, 0.0]
    assert np.isfinite(float(losses["rcnn_cls"][0])) and float(losses["rcnn_cls"][0]) > 0


def test_gradients_reach_every_head_weight_and_not_the_proposals():
    keras.utils.set_random_seed(0)
    head = StandardRoIHead(small_cfg())
    head.build()
    # A gt added as a proposal has regression target exactly 0; with fc_reg's bias 0, a RoI whose shared-fc ReLUs
    # are all off predicts exactly 0 too, and |x| has gradient 0 at 0. A nonzero bias keeps the test about reach.
    head.bbox_head.fc_reg.bias.assign(tf.fill(head.bbox_head.fc_reg.bias.shape, 0.01))
    feats = features()
    proposals = tf.constant(PROPOSALS)
    gt = tf.constant(GT)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(feats + [proposals, gt])
        losses = head.loss_terms(feats, proposals, tf.constant(PROPOSALS_VALID), gt, tf.constant(GT_CLASSES),
                             tf.constant(GT_MASKS), None, tf.constant([1, 2]))
        total = sum(s / tf.maximum(n, 1.0) for s, n in losses.values())
    grads = tape.gradient(total, head.trainable_weights)
    assert len(grads) == 2 * (4 + 2 + 2)  # kernels and biases of 4 dense, 2 convs, upsample, logits
    for v, g in zip(head.trainable_weights, grads):
        assert g is not None and np.any(g.numpy() != 0), v.path
    assert tape.gradient(total, proposals) is None and tape.gradient(total, gt) is None
    assert all(tape.gradient(total, f) is not None for f in feats[:4])  # the backbone trains through RoIAlign


@pytest.mark.parametrize("gt_scale, second_gt, flat", [(1.0, [0.0] * 4, 2), (0.0, [0.0] * 4, 0),
                                                       (1.0, [80.0, 80.0, 110.0, 110.0], 3)],
                         ids=["two_positives", "no_positive", "uneven"])
def test_mask_rois_positives_and_static_give_the_same_losses_and_gradients(gt_scale, second_gt, flat, monkeypatch):
    # Image 0 has 2 positives (G, A) with gt, image 1 none, or 1 (its gt, which no proposal overlaps): 'positives'
    # runs the mask head on the batch's positives as one list (2, 0 or 3 RoIs; padding each image to the largest
    # count would be 4 in the uneven case), 'static' on all int(512 * 0.25) = 128 slots of both images.
    # (The batch without positives is also what oneDNN's convolution gradients cannot take empty.)
    keras.utils.set_random_seed(0)
    head = StandardRoIHead(small_cfg())
    head.build()
    feats = features(batch=2)
    gt = tf.constant(GT + [[second_gt, [0.0] * 4]]) * gt_scale
    classes = tf.constant(GT_CLASSES + [[1 if any(second_gt) else 0, 0]]) * int(gt_scale)
    seen = []
    call = FCNMaskHead.call
    monkeypatch.setattr(FCNMaskHead, "call",
                        lambda self, x: seen.append(int(tf.shape(x)[0] * tf.shape(x)[1])) or call(self, x))

    def run(mode):
        head.train_cfg.mask_rois = mode
        with tf.GradientTape() as tape:
            losses = head.loss_terms(feats, tf.constant(PROPOSALS * 2), tf.constant(PROPOSALS_VALID * 2), gt, classes,
                                 tf.constant(np.ones([2, 2, 16, 16], np.float32)), None, tf.constant([3, 4]))
            total = sum(s / tf.maximum(n, 1.0) for s, n in losses.values())
        grads = tape.gradient(total, head.trainable_weights)
        return {k: [float(x) for x in v] for k, v in losses.items()}, grads

    dynamic, dynamic_grads = run("positives")
    static, static_grads = run("static")
    assert seen == [max(flat, 1), 2 * 128]  # no positive: one placeholder RoI, weighted 0
    assert dynamic.keys() == static.keys()
    for k in dynamic:
        np.testing.assert_allclose(dynamic[k], static[k], rtol=1e-6, err_msg=k)
    for v, a, b in zip(head.trainable_weights, dynamic_grads, static_grads):
        assert (a is None) == (b is None), v.path
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=v.path)
    assert dynamic["mask"][1] == flat * 784


# ------------------------------------------------------------------------------------------------ predict

# Logits [0, ln 6, ln 3, 0]: softmax [1, 6, 3, 1] / 11, so every RoI scores 6/11, 3/11, 1/11 for classes 1, 2, 3.
PREDICT_CLS_BIAS = [0.0, math.log(6.0), math.log(3.0), 0.0]
# Class 2 moves boxes right by dx = 1 · std 0.1 = 0.1 widths; classes 1 and 3 keep the proposal.
PREDICT_REG_BIAS = [0.0] * 4 + [1.0, 0.0, 0.0, 0.0] + [0.0] * 4
# Mask channels: sigmoid(0) = 0.5 for class 1, sigmoid(ln 3) = 0.75 for class 2, sigmoid(-ln 3) = 0.25 for class 3.
PREDICT_MASK_BIAS = [0.0, math.log(3.0), -math.log(3.0)]
# Three disjoint proposals; the third reaches past the image's true height 60; the fourth is invalid.
PREDICT_PROPOSALS = [[[0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 50.0, 50.0], [40.0, 0.0, 70.0, 30.0],
                      [0.0, 80.0, 10.0, 90.0]]]
IMAGE_SIZE = [[60, 100]]


def predict(score_thr=0.05, max_per_img=100, function=False, min_bbox_size=0.0):
    test_cfg = RCNNTestCfg(score_thr=score_thr, max_per_img=max_per_img, min_bbox_size=min_bbox_size)
    head = controlled(StandardRoIHead(small_cfg(), test_cfg=test_cfg), PREDICT_CLS_BIAS, PREDICT_REG_BIAS,
                      PREDICT_MASK_BIAS)
    fn = tf.function(head.predict) if function else head.predict
    out = fn(features(), tf.constant(PREDICT_PROPOSALS), tf.constant([[True, True, True, False]]),
             tf.constant(IMAGE_SIZE))
    return {k: v.numpy()[0] for k, v in out.items()}


def detections(out):
    n = out["num_detections"]
    return sorted((int(c), tuple(np.round(b, 4))) for c, b in zip(out["detection_classes"][:n],
                                                                  out["detection_boxes"][:n]))


def test_predict_classes_boxes_and_masks():
    out = predict()
    assert out["detection_boxes"].shape == (100, 4) and out["detection_masks"].shape == (100, 28, 28)
    assert out["detection_classes"].dtype == np.int32 and out["num_detections"] == 9
    # Class 2 is shifted by 0.1 · width (2, 2 and 3 px); the third proposal is clipped to y <= 60.
    expected = sorted(
        [(1, (0, 0, 20, 20)), (1, (30, 30, 50, 50)), (1, (40, 0, 60, 30)),
         (2, (0, 2, 20, 22)), (2, (30, 32, 50, 52)), (2, (40, 3, 60, 33)),
         (3, (0, 0, 20, 20)), (3, (30, 30, 50, 50)), (3, (40, 0, 60, 30))])
    assert detections(out) == expected
    np.testing.assert_allclose(out["detection_scores"][:9], [6 / 11] * 3 + [3 / 11] * 3 + [1 / 11] * 3, rtol=1e-5)
    # Masks: the detected class's channel; padding detections have none.
    probability = {1: 0.5, 2: 0.75, 3: 0.25}
    for k in range(9):
        np.testing.assert_allclose(out["detection_masks"][k], probability[out["detection_classes"][k]], rtol=1e-5)
    assert not out["detection_masks"][9:].any() and not out["detection_classes"][9:].any()


def test_predict_score_thr_is_strict_and_max_per_img():
    class3 = float(tf.nn.softmax(tf.constant(PREDICT_CLS_BIAS))[3])  # the exact float32 score of class 3
    out = predict(score_thr=class3)
    assert out["num_detections"] == 6 and set(out["detection_classes"][:6]) == {1, 2}
    out = predict(score_thr=np.nextafter(np.float32(class3), np.float32(0)))
    assert out["num_detections"] == 9
    # Top 4 of the 9: the three class-1 detections (6/11), then one class 2 (3/11).
    out = predict(max_per_img=4)
    assert out["num_detections"] == 4 and out["detection_boxes"].shape == (4, 4)
    assert sorted(out["detection_classes"]) == [1, 1, 1, 2]


def test_predict_min_bbox_size_keeps_sides_at_least_it():
    # every detection of test_predict_classes_boxes_and_masks has a side of exactly 20 px (after clipping)
    assert predict(min_bbox_size=20.0)["num_detections"] == 9  # torchvision's remove_small_boxes keeps w, h >= it
    assert predict(min_bbox_size=float(np.nextafter(np.float32(20), np.float32(21))))["num_detections"] == 0


def test_predict_and_losses_under_tf_function():
    eager, graph = predict(), predict(function=True)
    assert detections(eager) == detections(graph)
    for key in eager:
        np.testing.assert_allclose(graph[key], eager[key], atol=1e-6)
    head = controlled(StandardRoIHead(small_cfg()), CLS_BIAS, REG_BIAS, MASK_BIAS)
    losses = hand_losses(head, function=True)
    np.testing.assert_allclose([losses[k][0] for k in ("rcnn_cls", "rcnn_bbox", "mask")],
                               [EXPECTED_CLS, EXPECTED_L1, EXPECTED_MASK], rtol=1e-5)


def test_faster_rcnn_head_predicts_without_masks():
    head = StandardRoIHead(small_cfg(mask=False))
    out = head.predict(features(), tf.constant(PREDICT_PROPOSALS), tf.ones([1, 4], tf.bool), tf.constant(IMAGE_SIZE))
    assert "detection_masks" not in out and out["detection_boxes"].shape == (1, 100, 4)
    assert set(hand_losses(head)) == {"rcnn_cls", "rcnn_bbox"}


# ------------------------------------------------------------------------------------------------ Keras plumbing

def test_mixed_bfloat16():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        head = StandardRoIHead(small_cfg())
        head.build()
        assert head.bbox_head.fc_cls.kernel.dtype == "float32"
        feats = [tf.cast(f, tf.bfloat16) for f in features()]
        assert head.bbox_roi_extractor(feats, tf.constant(PROPOSALS)).dtype == tf.bfloat16
        losses = hand_losses(head, features=feats)
        assert all(np.isfinite(v).all() for v in losses.values())
        out = head.predict(feats, tf.constant(PREDICT_PROPOSALS), tf.ones([1, 4], tf.bool), tf.constant(IMAGE_SIZE))
        assert out["detection_boxes"].dtype == out["detection_masks"].dtype == tf.float32
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_config_round_trip_and_names():
    head = StandardRoIHead(small_cfg(), RCNNTrainCfg(pos_weight=2.0), RCNNTestCfg(score_thr=0.3))
    head.build()
    clone = StandardRoIHead.from_config(head.get_config())
    assert clone.cfg == head.cfg and clone.train_cfg == head.train_cfg and clone.test_cfg == head.test_cfg
    assert clone.name == "roi_head"
    for layer in (head.bbox_head, head.mask_head):
        assert type(layer).from_config(layer.get_config()).cfg == layer.cfg
    assert [v.path for v in head.weights][:2] == ["roi_head/bbox_head/shared_fcs_0/kernel",
                                                  "roi_head/bbox_head/shared_fcs_0/bias"]
    assert "roi_head/mask_head/upsample/kernel" in [v.path for v in head.weights]


def test_mask_size_must_match_the_head():
    with pytest.raises(ValueError, match="mask_size"):
        StandardRoIHead(small_cfg(), RCNNTrainCfg(mask_size=14))
