import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from tfrcnn.ops import boxes as B


def random_boxes(rng, shape, size=100.0, min_side=1.0):
    """[..., 4] valid boxes [y1, x1, y2, x2] with sides in [min_side, size)."""
    y1x1 = rng.uniform(0, size, shape + (2,))
    hw = rng.uniform(min_side, size, shape + (2,))
    return np.concatenate([y1x1, y1x1 + hw], axis=-1).astype(np.float32)


def test_area_hand_computed():
    # [y1, x1, y2, x2]: 2 high × 3 wide = 6; a zero-width box has area 0; an inverted box counts as 0.
    boxes = tf.constant([[0, 0, 2, 3], [5, 5, 9, 5], [4, 4, 2, 6]], tf.float32)
    np.testing.assert_allclose(B.area(boxes), [6, 0, 0])


def test_iou_and_iof_hand_computed():
    a = tf.constant([[[0, 0, 2, 2]]], tf.float32)  # area 4
    b = tf.constant([[[1, 1, 3, 3],  # overlap [1,1,2,2] = 1; union 4 + 4 - 1 = 7
                      [0, 0, 2, 2],  # identical: IoU 1
                      [2, 2, 4, 4],  # touches at a corner: intersection 0
                      [0, 0, 1, 4]]], tf.float32)  # overlap [0,0,1,2] = 2; area 4; union 6
    np.testing.assert_allclose(B.pairwise_iou(a, b)[0, 0], [1 / 7, 1, 0, 2 / 6], rtol=1e-6)
    # IoF divides the intersection by the area of the first argument (4): 1/4, 1, 0, 2/4.
    np.testing.assert_allclose(B.pairwise_iof(a, b)[0, 0], [0.25, 1, 0, 0.5], rtol=1e-6)


def test_iou_padding_gets_fill():
    a = tf.constant([[[0, 0, 2, 2], [0, 0, 0, 0]]], tf.float32)
    b = tf.constant([[[0, 0, 2, 2], [0, 0, 2, 2]]], tf.float32)
    iou = B.pairwise_iou(a, b, valid1=[[True, False]], valid2=[[True, False]], fill=-1.0)
    np.testing.assert_allclose(iou[0], [[1, -1], [-1, -1]])


def test_clip_per_image_size():
    boxes = tf.constant([[[-5, -5, 50, 80]], [[-5, -5, 50, 80]]], tf.float32)
    # Image 0 is 40 high × 60 wide; image 1 is 100 × 100: only negatives are clipped.
    clipped = B.clip_boxes(boxes, tf.constant([[40, 60], [100, 100]]))
    np.testing.assert_allclose(clipped[:, 0], [[0, 0, 40, 60], [0, 0, 50, 80]])


def test_encode_hand_computed():
    # Anchor: centre (y, x) = (10, 20), h = 10, w = 20.  Target: centre (12, 26), h = 20, w = 10.
    anchor = tf.constant([5, 10, 15, 30], tf.float32)
    target = tf.constant([2, 21, 22, 31], tf.float32)
    # dx = (26 - 20) / 20 = 0.3, dy = (12 - 10) / 10 = 0.2, dw = log(10 / 20), dh = log(20 / 10).
    expected = np.array([0.3, 0.2, math.log(0.5), math.log(2.0)])
    np.testing.assert_allclose(B.encode_boxes(target, anchor), expected, rtol=1e-6)
    # Normalized by the R-CNN stds (0.1, 0.1, 0.2, 0.2): 3, 2, log(.5)/.2, log(2)/.2.
    np.testing.assert_allclose(B.encode_boxes(target, anchor, target_stds=(0.1, 0.1, 0.2, 0.2)),
                               expected / [0.1, 0.1, 0.2, 0.2], rtol=1e-5)


def test_decode_clamps():
    anchor = tf.constant([0, 0, 10, 10], tf.float32)
    clamp = math.log(1000 / 16)
    # dw = 10 is clamped to log(62.5): width 10 * 62.5 = 625, centred on x = 5.
    big = B.decode_boxes(tf.constant([0, 0, 10, 0], tf.float32), anchor)
    np.testing.assert_allclose(big, [0, 5 - 312.5, 10, 5 + 312.5], rtol=1e-5)
    # dh = -10: MMDetection clamps from below too (height 10 / 62.5 = 0.16); torchvision does not (10 * e^-10).
    small = tf.constant([0, 0, 0, -10], tf.float32)
    np.testing.assert_allclose(B.decode_boxes(small, anchor, clamp="both"), [5 - 0.08, 0, 5 + 0.08, 10], rtol=1e-5)
    h = 10 * math.exp(-10)
    np.testing.assert_allclose(B.decode_boxes(small, anchor, clamp="above"), [5 - h / 2, 0, 5 + h / 2, 10],
                               rtol=1e-5)
    assert clamp == pytest.approx(B.DEFAULT_DELTA_CLAMP)
    with pytest.raises(ValueError, match="clamp"):
        B.decode_boxes(small, anchor, clamp="sideways")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 6), m=st.integers(1, 6))
def test_iou_symmetric_and_bounded(seed, n, m):
    rng = np.random.default_rng(seed)
    a, b = random_boxes(rng, (2, n)), random_boxes(rng, (2, m))
    ab = B.pairwise_iou(a, b).numpy()
    ba = B.pairwise_iou(b, a).numpy()
    np.testing.assert_allclose(ab, np.transpose(ba, (0, 2, 1)), rtol=1e-6)
    assert ab.min() >= 0.0 and ab.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(np.diagonal(B.pairwise_iou(a, a).numpy(), axis1=1, axis2=2), 1.0, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), stds=st.sampled_from([(1.0, 1.0, 1.0, 1.0), (0.1, 0.1, 0.2, 0.2)]),
       means=st.sampled_from([(0.0, 0.0, 0.0, 0.0), (0.1, -0.2, 0.05, 0.0)]))
def test_decode_inverts_encode(seed, stds, means):
    rng = np.random.default_rng(seed)
    # Sides in [10, 100): size ratios stay below 10, far from the 1000/16 clamp.
    anchors, targets = random_boxes(rng, (3, 8), min_side=10), random_boxes(rng, (3, 8), min_side=10)
    deltas = B.encode_boxes(targets, anchors, means, stds)
    for clamp in ("both", "above"):
        decoded = B.decode_boxes(deltas, anchors, means, stds, clamp=clamp)
        np.testing.assert_allclose(decoded, targets, atol=1e-3)
