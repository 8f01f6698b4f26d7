"""Tests for tfrcnn.ops.nms: hand-computed cases, properties, and parity with torchvision's batched_nms."""
import numpy as np
import pytest
import tensorflow as tf
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from tfrcnn.ops.boxes import pairwise_iou
from tfrcnn.ops.nms import multiclass_nms, multilevel_proposals

# A = [0, 0, 10, 10] has area 100. Boxes that overlap it:
A = [0.0, 0.0, 10.0, 10.0]
B_IOU_05 = [0.0, 0.0, 10.0, 20.0]  # area 200, A inside it: inter 100, union 100 + 200 - 100 = 200, IoU 0.5
B_IOU_06 = [0.0, 0.0, 6.0, 10.0]   # area 60, inside A: inter 60, union 100 + 60 - 60 = 100, IoU 0.6
B_IOU_03 = [0.0, 0.0, 3.0, 10.0]   # area 30, inside A: inter 30, union 100, IoU 30 / 100 = float32(0.3)
FAR = [50.0, 50.0, 60.0, 70.0]     # disjoint from all of the above: IoU 0


def _levels(*levels):
    """[(boxes [N_l, 4], scores [N_l]), ...] for one image → (boxes list [1, N_l, 4], scores list [1, N_l])."""
    boxes = [tf.constant([b], tf.float32) for b, _ in levels]
    scores = [tf.constant([s], tf.float32) for _, s in levels]
    return boxes, scores


def _np(outputs):
    return [np.asarray(t) for t in outputs]


# ---------------------------------------------------------------------------------------------------
# multilevel_proposals: hand-computed cases
# ---------------------------------------------------------------------------------------------------

def test_iou_equal_to_threshold_is_kept():
    # IoU(A, B) = 100 / 200 = 0.5 exactly; suppression needs IoU > 0.5, so both stay.
    boxes, scores = _levels(([A, B_IOU_05], [0.9, 0.8]))
    props, sc, valid = _np(multilevel_proposals(boxes, scores, nms_thr=0.5, max_per_img=3))
    np.testing.assert_array_equal(props[0], [A, B_IOU_05, [0, 0, 0, 0]])
    np.testing.assert_allclose(sc[0], [0.9, 0.8, 0.0])
    np.testing.assert_array_equal(valid[0], [True, True, False])


def test_iou_above_threshold_is_suppressed():
    # IoU(A, B) = 60 / 100 = 0.6 > 0.5: the lower-scoring B goes; FAR (IoU 0) stays.
    boxes, scores = _levels(([A, B_IOU_06, FAR], [0.9, 0.8, 0.7]))
    props, sc, valid = _np(multilevel_proposals(boxes, scores, nms_thr=0.5, max_per_img=3))
    np.testing.assert_array_equal(props[0], [A, FAR, [0, 0, 0, 0]])
    np.testing.assert_allclose(sc[0], [0.9, 0.7, 0.0])
    np.testing.assert_array_equal(valid[0], [True, True, False])


def test_threshold_not_representable_in_float32_follows_torchvision():
    # float32(0.3) = 0.30000001 > 0.3. IoU(A, B_IOU_03) = 30 / 100 evaluates to 0.30000001 in float32,
    # which torchvision's nms compares with the float64 threshold 0.3: suppressed. A float32 comparison
    # with float32(0.3) would keep it. At 0.31 it is kept either way.
    boxes, scores = _levels(([A, B_IOU_03], [0.9, 0.8]))
    ref = torchvision.ops.nms(_torch_xyxy(np.array([A, B_IOU_03], np.float32)), torch.tensor([0.9, 0.8]), 0.3)
    assert ref.tolist() == [0]
    _, _, valid = _np(multilevel_proposals(boxes, scores, nms_thr=0.3, max_per_img=2))
    np.testing.assert_array_equal(valid[0], [True, False])
    _, _, valid = _np(multilevel_proposals(boxes, scores, nms_thr=0.31, max_per_img=2))
    np.testing.assert_array_equal(valid[0], [True, True])


def test_levels_do_not_suppress_each_other_unless_across_levels():
    # A on level 0 (0.9) and B (IoU 0.6 with A) on level 1 (0.8): per-level NMS keeps both,
    # one NMS across levels drops B (0.6 > 0.5).
    boxes, scores = _levels(([A], [0.9]), ([B_IOU_06], [0.8]))
    props, sc, valid = _np(multilevel_proposals(boxes, scores, nms_thr=0.5, max_per_img=2))
    np.testing.assert_array_equal(props[0], [A, B_IOU_06])
    np.testing.assert_allclose(sc[0], [0.9, 0.8])
    np.testing.assert_array_equal(valid[0], [True, True])

    props, sc, valid = _np(multilevel_proposals(boxes, scores, nms_thr=0.5, max_per_img=2,
                                                nms_across_levels=True))
    np.testing.assert_array_equal(props[0], [A, [0, 0, 0, 0]])
    np.testing.assert_allclose(sc[0], [0.9, 0.0])
    np.testing.assert_array_equal(valid[0], [True, False])


def test_max_per_img_keeps_the_highest_scores_over_levels():
    # Five disjoint boxes (IoU 0 between any two), scores 0.1 .. 0.5 spread over two levels; the top 3
    # over both levels are 0.5 (level 1), 0.4 (level 0), 0.3 (level 1).
    rows = [[10.0 * i, 0.0, 10.0 * i + 5.0, 5.0] for i in range(5)]
    boxes, scores = _levels(([rows[0], rows[1], rows[3]], [0.1, 0.2, 0.4]),
                            ([rows[2], rows[4]], [0.3, 0.5]))
    props, sc, valid = _np(multilevel_proposals(boxes, scores, nms_thr=0.7, max_per_img=3))
    np.testing.assert_array_equal(props[0], [rows[4], rows[3], rows[2]])
    np.testing.assert_allclose(sc[0], [0.5, 0.4, 0.3])
    assert valid[0].all()


def test_invalid_proposals_are_never_output_and_suppress_nothing():
    # A (0.9) is invalid: it is not output, and B (IoU 0.6 with A) survives since A cannot suppress it.
    # A zero score is a valid proposal (torchvision keeps sigmoid >= 0), so FAR at 0.0 is kept.
    boxes, scores = _levels(([A, B_IOU_06, FAR], [0.9, 0.8, 0.0]))
    valid_in = [tf.constant([[False, True, True]])]
    props, sc, valid = _np(multilevel_proposals(boxes, scores, 0.5, 4, valid=valid_in))
    np.testing.assert_array_equal(props[0], [B_IOU_06, FAR, [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(sc[0], [0.8, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(valid[0], [True, True, False, False])


def test_images_in_a_batch_are_independent():
    # Image 0: A, B (IoU 0.6) → B suppressed. Image 1: A, FAR (IoU 0) → both kept.
    boxes = [tf.constant([[A, B_IOU_06], [A, FAR]], tf.float32)]
    scores = [tf.constant([[0.9, 0.8], [0.6, 0.7]], tf.float32)]
    props, sc, valid = _np(multilevel_proposals(boxes, scores, 0.5, 2))
    np.testing.assert_array_equal(props, [[A, [0, 0, 0, 0]], [FAR, A]])
    np.testing.assert_allclose(sc, [[0.9, 0.0], [0.7, 0.6]])
    np.testing.assert_array_equal(valid, [[True, False], [True, True]])


# ---------------------------------------------------------------------------------------------------
# multiclass_nms: hand-computed cases
# ---------------------------------------------------------------------------------------------------

def test_score_threshold_is_strict():
    # score_thr 0.05: a score of exactly float32(0.05) is dropped, the next float32 above it is kept.
    at = np.float32(0.05)
    above = np.nextafter(at, np.float32(1.0))
    boxes = tf.constant([[[A], [FAR]]], tf.float32)  # [1, 2, 1, 4], class-agnostic
    scores = tf.constant([[[at], [above]]], tf.float32)  # [1, 2, 1]
    out = multiclass_nms(boxes, scores, score_thr=0.05, iou_thr=0.5, max_per_img=2)
    np.testing.assert_array_equal(out["detection_boxes"][0], [FAR, [0, 0, 0, 0]])
    np.testing.assert_array_equal(out["detection_scores"][0], [above, 0.0])
    np.testing.assert_array_equal(out["detection_classes"][0], [1, 0])
    np.testing.assert_array_equal(out["num_detections"], [1])


def test_multiclass_iou_rule():
    # One class: IoU 0.5 (A, B_IOU_05) is not > 0.5, both kept; IoU 0.6 (A, B_IOU_06) > 0.5, dropped.
    boxes = tf.constant([[[A], [B_IOU_05], [B_IOU_06]]], tf.float32)
    scores = tf.constant([[[0.9], [0.8], [0.7]]], tf.float32)
    out = multiclass_nms(boxes, scores, score_thr=0.05, iou_thr=0.5, max_per_img=3)
    np.testing.assert_array_equal(out["detection_boxes"][0], [A, B_IOU_05, [0, 0, 0, 0]])
    np.testing.assert_allclose(out["detection_scores"][0], [0.9, 0.8, 0.0])
    np.testing.assert_array_equal(out["num_detections"], [2])


def test_classes_are_suppressed_independently():
    # Two proposals with class-specific boxes (C = 2, so columns 0, 1 are classes 1, 2):
    #   proposal 0: class 1 box A (0.9),        class 2 box FAR (0.6)
    #   proposal 1: class 1 box B_IOU_06 (0.8), class 2 box B_IOU_06 (0.7)
    # Class 1: IoU(A, B_IOU_06) = 0.6 > 0.5 → B dropped. Class 2: IoU(FAR, B_IOU_06) = 0 → both kept,
    # although B_IOU_06 overlaps class 1's A: other classes never suppress.
    boxes = tf.constant([[[A, FAR], [B_IOU_06, B_IOU_06]]], tf.float32)  # [1, 2, 2, 4]
    scores = tf.constant([[[0.9, 0.6], [0.8, 0.7]]], tf.float32)  # [1, 2, 2]
    out = multiclass_nms(boxes, scores, score_thr=0.05, iou_thr=0.5, max_per_img=4)
    np.testing.assert_array_equal(out["detection_boxes"][0], [A, B_IOU_06, FAR, [0, 0, 0, 0]])
    np.testing.assert_allclose(out["detection_scores"][0], [0.9, 0.7, 0.6, 0.0])
    np.testing.assert_array_equal(out["detection_classes"][0], [1, 2, 2, 0])
    np.testing.assert_array_equal(out["num_detections"], [3])


def test_multiclass_max_per_img_and_invalid():
    # Class-agnostic boxes, 3 disjoint proposals × 2 classes = 6 pairs scoring 0.1 .. 0.6.
    # The 0.6 pair is invalid, so the top 2 are 0.5 and 0.4.
    rows = [[10.0 * i, 0.0, 10.0 * i + 5.0, 5.0] for i in range(3)]
    boxes = tf.constant([[[r] for r in rows]], tf.float32)  # [1, 3, 1, 4]
    scores = tf.constant([[[0.1, 0.6], [0.5, 0.2], [0.3, 0.4]]], tf.float32)  # [1, 3, 2]
    valid = tf.constant([[[True, False], [True, True], [True, True]]])
    out = multiclass_nms(boxes, scores, score_thr=0.05, iou_thr=0.5, max_per_img=2, valid=valid)
    np.testing.assert_array_equal(out["detection_boxes"][0], [rows[1], rows[2]])
    np.testing.assert_allclose(out["detection_scores"][0], [0.5, 0.4])
    np.testing.assert_array_equal(out["detection_classes"][0], [1, 2])
    np.testing.assert_array_equal(out["num_detections"], [2])


def test_negative_score_threshold_keeps_every_valid_pair():
    # score_thr below 0 means "keep all": a 0.0 score is kept, an invalid pair still is not.
    boxes = tf.constant([[[A], [FAR]]], tf.float32)
    scores = tf.constant([[[0.0], [0.3]]], tf.float32)
    out = multiclass_nms(boxes, scores, score_thr=float("-inf"), iou_thr=0.5, max_per_img=3,
                         valid=tf.constant([[[True], [False]]]))
    np.testing.assert_array_equal(out["detection_boxes"][0], [A, [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(out["num_detections"], [1])


# ---------------------------------------------------------------------------------------------------
# Random data: properties and torchvision parity
# ---------------------------------------------------------------------------------------------------

def _random_levels(rng, batch, sizes):
    """Clustered boxes so that NMS has work to do, with scores distinct over each whole image.

    Coordinates are multiples of 1/16 in [0, 210], clipped like real proposals (so some boxes are flat):
    torchvision's batched_nms shifts each level's boxes by level * (max coordinate + 1), which is then
    exact, so its IoUs are bit-identical to unshifted ones and parity can be tested exactly.
    """
    total = sum(sizes)
    centres = rng.uniform(20, 180, size=(batch, 4, 2))
    pick = centres[np.arange(batch)[:, None], rng.integers(0, 4, size=(batch, total))]  # [B, T, 2]
    centre = pick + rng.normal(0, 6, size=(batch, total, 2))
    half = rng.uniform(2, 30, size=(batch, total, 2))
    boxes = np.concatenate([centre - half, centre + half], axis=-1)  # y1, x1, y2, x2
    boxes = np.clip(np.round(boxes * 16) / 16, 0, 210).astype(np.float32)
    scores = np.stack([rng.permutation(total) for _ in range(batch)]).astype(np.float32)
    scores = (scores + 1) / (total + 1)  # distinct, in (0, 1)
    valid = rng.uniform(size=(batch, total)) > 0.15
    split = np.cumsum(sizes)[:-1]
    return (np.split(boxes, split, axis=1), np.split(scores, split, axis=1), np.split(valid, split, axis=1))


def _run_proposals(boxes, scores, valid, **kw):
    return _np(multilevel_proposals([tf.constant(b) for b in boxes], [tf.constant(s) for s in scores],
                                    valid=[tf.constant(v) for v in valid], **kw))


def _torch_xyxy(boxes_yxyx):
    return torch.from_numpy(boxes_yxyx[:, [1, 0, 3, 2]].copy())


_level_sizes = st.lists(st.integers(1, 12), min_size=1, max_size=4)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), sizes=_level_sizes, thr=st.sampled_from([0.3, 0.5, 0.7]),
       k=st.integers(1, 20), across=st.booleans())
def test_proposals_properties(seed, sizes, thr, k, across):
    rng = np.random.default_rng(seed)
    boxes, scores, valid = _random_levels(rng, 2, sizes)
    props, sc, keep = _run_proposals(boxes, scores, valid, nms_thr=thr, max_per_img=k,
                                     nms_across_levels=across)
    assert props.shape == (2, k, 4) and sc.shape == (2, k) and keep.shape == (2, k)
    all_boxes, all_scores, all_valid = (np.concatenate(x, axis=1) for x in (boxes, scores, valid))
    level = np.repeat(np.arange(len(sizes)), sizes)
    for b in range(2):
        n = keep[b].sum()
        assert n <= k
        assert keep[b, :n].all() and not keep[b, n:].any()  # real proposals first
        assert (props[b, n:] == 0).all() and (sc[b, n:] == 0).all()  # padding zero
        assert (np.diff(sc[b, :n]) < 0).all()  # sorted; scores are distinct
        # Each output is an input (scores are distinct, so a score names its input) and a valid one.
        idx = np.array([np.flatnonzero(all_scores[b] == s)[0] for s in sc[b, :n]], dtype=np.int64)
        np.testing.assert_array_equal(props[b, :n], all_boxes[b, idx])
        assert all_valid[b, idx].all()
        # No two kept boxes of one level (any two, across levels) overlap more than the threshold.
        iou = np.asarray(pairwise_iou(props[b:b + 1, :n], props[b:b + 1, :n]))[0]
        same = np.ones((n, n), bool) if across else level[idx][:, None] == level[idx][None, :]
        assert (iou[same & ~np.eye(n, dtype=bool)] <= thr).all()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), sizes=_level_sizes, thr=st.sampled_from([0.3, 0.5, 0.7]),
       k=st.integers(1, 20), across=st.booleans())
def test_proposals_match_torchvision_batched_nms(seed, sizes, thr, k, across):
    rng = np.random.default_rng(seed)
    boxes, scores, valid = _random_levels(rng, 2, sizes)
    props, sc, keep = _run_proposals(boxes, scores, valid, nms_thr=thr, max_per_img=k,
                                     nms_across_levels=across)
    all_boxes, all_scores, all_valid = (np.concatenate(x, axis=1) for x in (boxes, scores, valid))
    level = np.repeat(np.arange(len(sizes)), sizes)
    if across:
        level = np.zeros_like(level)
    for b in range(2):
        # torchvision's filter_proposals: drop invalid boxes, batched_nms by level, keep the first k.
        m = np.flatnonzero(all_valid[b])
        ref = torchvision.ops.batched_nms(_torch_xyxy(all_boxes[b, m]), torch.from_numpy(all_scores[b, m]),
                                          torch.from_numpy(level[m]), thr)[:k].numpy()
        n = keep[b].sum()
        assert n == len(ref)
        np.testing.assert_array_equal(props[b, :n], all_boxes[b, m[ref]])
        np.testing.assert_array_equal(sc[b, :n], all_scores[b, m[ref]])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 15), c=st.integers(1, 4),
       agnostic=st.booleans(), score_thr=st.sampled_from([0.0, 0.05, 0.5]),
       iou_thr=st.sampled_from([0.3, 0.5, 0.7]), k=st.integers(1, 25))
def test_multiclass_nms_matches_torchvision(seed, n, c, agnostic, score_thr, iou_thr, k):
    rng = np.random.default_rng(seed)
    q = 1 if agnostic else c
    level_boxes, _, _ = _random_levels(rng, 2, [n * q])
    boxes = level_boxes[0].reshape(2, n, q, 4)
    scores = (rng.permutation(2 * n * c).reshape(2, n, c).astype(np.float32) + 1) / (2 * n * c + 1)
    valid = rng.uniform(size=(2, n, c)) > 0.15
    out = {key: np.asarray(v) for key, v in multiclass_nms(
        tf.constant(boxes), tf.constant(scores), score_thr, iou_thr, k, valid=tf.constant(valid)).items()}
    assert out["detection_boxes"].shape == (2, k, 4) and out["detection_classes"].dtype == np.int32
    for b in range(2):
        # MMDetection's multiclass_nms: flatten (box, class) pairs, score > thr, batched_nms by class, first k.
        pair_boxes = np.broadcast_to(boxes[b], (n, c, 4)).reshape(-1, 4)
        pair_scores, pair_labels = scores[b].reshape(-1), np.tile(np.arange(c), n)
        m = np.flatnonzero(valid[b].reshape(-1) & (pair_scores > np.float32(score_thr)))
        ref = torchvision.ops.batched_nms(_torch_xyxy(pair_boxes[m]), torch.from_numpy(pair_scores[m]),
                                          torch.from_numpy(pair_labels[m]), iou_thr)[:k].numpy()
        num = out["num_detections"][b]
        assert num == len(ref)
        np.testing.assert_array_equal(out["detection_boxes"][b, :num], pair_boxes[m[ref]])
        np.testing.assert_array_equal(out["detection_scores"][b, :num], pair_scores[m[ref]])
        np.testing.assert_array_equal(out["detection_classes"][b, :num], pair_labels[m[ref]] + 1)
        assert (out["detection_boxes"][b, num:] == 0).all() and (out["detection_scores"][b, num:] == 0).all()
        assert (out["detection_classes"][b, num:] == 0).all()


@pytest.mark.parametrize("across", [False, True])
def test_proposals_tf_function_equals_eager(across):
    rng = np.random.default_rng(7)
    boxes, scores, valid = _random_levels(rng, 2, [9, 5, 3])
    args = ([tf.constant(b) for b in boxes], [tf.constant(s) for s in scores], [tf.constant(v) for v in valid])
    eager = multilevel_proposals(*args[:2], 0.5, 8, nms_across_levels=across, valid=args[2])

    # Unknown box counts: the output shape stays static, [B, 8, ...].
    sig = [[tf.TensorSpec([None, None, 4], tf.float32)] * 3, [tf.TensorSpec([None, None], tf.float32)] * 3,
           [tf.TensorSpec([None, None], tf.bool)] * 3]
    fn = tf.function(lambda b, s, v: multilevel_proposals(b, s, 0.5, 8, nms_across_levels=across, valid=v),
                     input_signature=sig)
    assert fn.get_concrete_function().structured_outputs[0].shape.as_list() == [None, 8, 4]
    for e, g in zip(eager, fn(*args)):
        np.testing.assert_array_equal(e, g)


def test_multiclass_tf_function_equals_eager():
    rng = np.random.default_rng(11)
    boxes = _random_levels(rng, 2, [10 * 3])[0][0].reshape(2, 10, 3, 4)
    scores = rng.uniform(size=(2, 10, 3)).astype(np.float32)
    args = (tf.constant(boxes), tf.constant(scores))
    eager = multiclass_nms(*args, 0.05, 0.5, 6)
    graph = tf.function(lambda b, s: multiclass_nms(b, s, 0.05, 0.5, 6))(*args)
    for key in eager:
        np.testing.assert_array_equal(eager[key], graph[key])
