import numpy as np
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from tfrcnn.ops.assign import max_iou_assign
from tfrcnn.ops.boxes import pairwise_iou

RPN = dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)  # MMDetection's RPN assigner


def assign(anchors, gts, gt_valid=None, **kwargs):
    gts = tf.constant([gts], tf.float32)
    gt_valid = tf.ones(gts.shape[:2], tf.bool) if gt_valid is None else tf.constant([gt_valid])
    gt_inds, max_overlaps, matched = max_iou_assign(tf.constant(anchors, tf.float32), gts, gt_valid, **kwargs)
    return gt_inds[0].numpy().tolist(), max_overlaps[0].numpy(), matched[0].numpy().tolist()


def test_seed_thresholds_at_their_boundaries():
    gt = [[0, 0, 10, 10]]  # area 100
    anchors = [[0, 0, 10, 10],   # IoU 1 → positive
               [0, 0, 10, 7],    # inside the gt, area 70: IoU 70 / 100 = 0.7 exactly → positive (>= 0.7)
               [0, 0, 10, 6.9],  # IoU 0.69 → between the thresholds: ignored
               [0, 0, 10, 3],    # IoU 0.3 exactly → not negative (< 0.3 is), and the gt's best is 1: ignored
               [0, 0, 10, 2.9],  # IoU 0.29 → negative
               [20, 20, 30, 30]]  # IoU 0 → negative
    gt_inds, max_overlaps, _ = assign(anchors, gt, **RPN)
    assert gt_inds == [1, 1, -1, -1, 0, 0]
    np.testing.assert_allclose(max_overlaps, [1, 0.7, 0.69, 0.3, 0.29, 0], rtol=1e-6)


def test_low_quality_matches():
    gt = [[0, 0, 10, 10]]
    # Left half and right half: IoU 50 / 100 = 0.5 each, tied as the gt's best; a 10×4 strip: IoU 0.4.
    anchors = [[0, 0, 10, 5], [0, 5, 10, 10], [0, 0, 10, 4]]
    assert assign(anchors, gt, **RPN)[0] == [1, 1, -1]  # gt_max_assign_all: every anchor tied at the best
    assert assign(anchors, gt, **RPN, gt_max_assign_all=False)[0] == [1, -1, -1]  # only the first
    assert assign(anchors, gt, **RPN, match_low_quality=False)[0] == [-1, -1, -1]
    # The gt's best IoU (0.5) must reach min_pos_iou: with 0.6 it claims nothing; 0.5 exactly still claims.
    assert assign(anchors, gt, pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.6)[0] == [-1, -1, -1]
    assert assign(anchors, gt, pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.5)[0] == [1, 1, -1]


def test_last_gt_claiming_an_anchor_wins():
    # The anchor [0,0,10,5] (area 50) is the best for both gts:
    # gt A [0,0,10,8] (area 80): IoU 50 / 80 = 0.625; gt B [0,-3,10,5] (area 80): inter 50, IoU 0.625.
    # Its own best gt is the first at the maximum (A), but MMDetection's loop lets B, claiming later, keep it.
    anchors = [[0, 0, 10, 5], [50, 50, 60, 60]]
    gt_inds, _, matched = assign(anchors, [[0, 0, 10, 8], [0, -3, 10, 5]], **RPN)
    assert gt_inds == [2, 0] and matched[0] == 1


def test_padding_ignore_regions_and_invalid_candidates():
    anchors = [[0, 0, 10, 10], [40, 40, 50, 50], [45, 40, 55, 50], [80, 80, 90, 90]]
    # The padded gt equals anchor 0 but must never match; the real gt matches anchor 3.
    gts = tf.constant([[[0, 0, 10, 10], [80, 80, 90, 90]]], tf.float32)
    crowd = tf.constant([[[0, 0, 50, 50]]], tf.float32)
    gt_inds, max_overlaps, _ = max_iou_assign(
        tf.constant(anchors, tf.float32), gts, tf.constant([[False, True]]), **RPN,
        ignore_boxes=crowd, ignore_valid=tf.constant([[True]]), ignore_iof_thr=0.5,
        boxes_valid=tf.constant([[True, True, True, False]]))
    # Anchor 0: inside the crowd box (IoF 1 > 0.5) → ignored. Anchor 1: inside too → ignored.
    # Anchor 2 [45,40,55,50]: half inside (IoF 50 / 100 = 0.5, not > 0.5) → a plain negative.
    # Anchor 3 would be positive (IoU 1) but is an invalid (padded) candidate → ignored.
    assert gt_inds[0].numpy().tolist() == [-1, -1, 0, -1]
    assert max_overlaps[0, 0] == -1


def test_image_without_gt_and_neg_range():
    anchors = [[0, 0, 10, 10], [0, 0, 10, 1]]
    # No real gt: everything is background.
    assert assign(anchors, [[0, 0, 10, 10]], gt_valid=[False], **RPN)[0] == [0, 0]
    # neg_iou_thr as a range [0.05, 0.3): IoU 10 / 100 = 0.1 is negative; IoU 4 / 100 = 0.04 is below the range,
    # so ignored (the gt's best, 0.1, is under min_pos_iou, so no low-quality claim either).
    gt = [[0, 0, 10, 10]]
    anchors = [[0, 0, 10, 1], [0, 0, 10, 0.4]]
    gt_inds = assign(anchors, gt, pos_iou_thr=0.7, neg_iou_thr=(0.05, 0.3), min_pos_iou=0.3)[0]
    assert gt_inds == [0, -1]


def reference_assign(overlaps, pos, neg, min_pos, gt_max_assign_all):
    """MMDetection's assign_wrt_overlaps, loop for loop, on one image's [num_gts, num_boxes] overlaps."""
    num_gts, num_boxes = overlaps.shape
    assigned = np.full(num_boxes, -1)
    max_overlaps, argmax = overlaps.max(0), overlaps.argmax(0)
    gt_max, gt_argmax = overlaps.max(1), overlaps.argmax(1)
    assigned[(max_overlaps >= 0) & (max_overlaps < neg)] = 0
    assigned[max_overlaps >= pos] = argmax[max_overlaps >= pos] + 1
    for i in range(num_gts):
        if gt_max[i] >= min_pos:
            if gt_max_assign_all:
                assigned[overlaps[i] == gt_max[i]] = i + 1
            else:
                assigned[gt_argmax[i]] = i + 1
    return assigned


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), pos=st.sampled_from([0.5, 0.6, 0.7]), neg=st.sampled_from([0.3, 0.4, 0.5]),
       min_pos=st.sampled_from([0.0, 0.3, 0.5]), assign_all=st.booleans())
def test_matches_mmdetection_loop(seed, pos, neg, min_pos, assign_all):
    rng = np.random.default_rng(seed)
    # Integer coordinates on a small grid make exact ties and IoUs exactly on the thresholds common.
    def boxes(n):
        y1x1 = rng.integers(0, 6, (n, 2))
        return np.concatenate([y1x1, y1x1 + rng.integers(1, 5, (n, 2))], -1).astype(np.float32)
    anchors, gts = boxes(12), boxes(3)
    neg = min(neg, pos)
    gt_inds, _, _ = max_iou_assign(anchors, gts[None], tf.ones([1, 3], tf.bool), pos_iou_thr=pos, neg_iou_thr=neg,
                                   min_pos_iou=min_pos, gt_max_assign_all=assign_all)
    # The reference gets our float32 IoUs, so the comparison tests the assignment logic, boundaries included.
    overlaps = pairwise_iou(anchors[None], gts[None])[0].numpy().T
    expected = reference_assign(overlaps, np.float32(pos), np.float32(neg), np.float32(min_pos), assign_all)
    np.testing.assert_array_equal(gt_inds[0].numpy(), expected)


def test_under_tf_function_and_shared_anchors():
    anchors = tf.constant([[0, 0, 10, 10], [20, 20, 30, 30]], tf.float32)
    gts = tf.constant([[[0, 0, 10, 10]], [[20, 20, 30, 30]]], tf.float32)
    fn = tf.function(lambda a, g: max_iou_assign(a, g, tf.ones([2, 1], tf.bool), **RPN)[0])
    np.testing.assert_array_equal(fn(anchors, gts), [[1, 0], [0, 1]])


def test_low_quality_gt_claiming_against_best():
    """A box that is one gt's best match but overlaps another gt more: MMDetection gives it to the gt that claims it,
    torchvision's Matcher to its own best gt."""
    anchors = [[0, 0, 10, 10],  # A: IoU 0.25 with G1 (G1's best), 0.6 with G2
               [0, 0, 10, 6]]   # B: G2 itself (IoU 1), 10 / 200 = 0.05 with G1
    gts = [[0, 5, 10, 20],      # G1, area 150: A ∩ G1 = 50, union 200
           [0, 0, 10, 6]]       # G2, area 60: A ∩ G2 = 60, union 100
    torchvision = dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.0)
    gt_inds, max_overlaps, matched = assign(anchors, gts, **torchvision, low_quality_gt="claiming")
    np.testing.assert_allclose(max_overlaps, [0.6, 1.0], rtol=1e-6)
    assert gt_inds == [1, 2] and matched == [0, 1]  # A → G1, which claims it
    gt_inds, _, matched = assign(anchors, gts, **torchvision, low_quality_gt="best")
    assert gt_inds == [2, 2] and matched == [1, 1]  # A → G2, its highest IoU; positive all the same
    gt_inds, _, _ = assign(anchors, gts, **RPN)  # MMDetection's min_pos_iou 0.3: A is no one's match, ignored
    assert gt_inds == [-1, 2]
