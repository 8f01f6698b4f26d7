from collections import OrderedDict

import torch  # test-only reference; tests/conftest.py imports it before TensorFlow
import torchvision

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from tfrcnn.ops import roi_align as R

STRIDES = (4, 8, 16, 32)
IMAGE = (256, 320)  # padded input (h, w): P2..P5 are 64x80, 32x40, 16x20, 8x10, scales exactly 1/4..1/32


def grid_feature(h, w, base=0.0):
    """[1, h, w, 1] map with value base + 10 * row + col."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return tf.constant((base + 10.0 * rows + cols)[None, :, :, None], tf.float32)


def pyramid(rng, batch, channels=3):
    return [rng.standard_normal((batch, IMAGE[0] // s, IMAGE[1] // s, channels)).astype(np.float32)
            for s in STRIDES]


def make_boxes(rng, batch, num):
    """[B, N, 4] boxes in input pixels: random, plus ones across every border, sub-pixel and huge ones."""
    cy, cx = rng.uniform(-20, IMAGE[0] + 20, (2, batch, num)) * [[[1]], [[IMAGE[1] / IMAGE[0]]]]
    h = np.exp(rng.uniform(np.log(0.3), np.log(600), (batch, num)))
    w = h * np.exp(rng.uniform(-1.5, 1.5, (batch, num)))
    boxes = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1)
    special = np.array([
        [-30.0, -40.0, 50.0, 60.0],  # top-left corner outside
        [200.0, 280.0, 300.0, 400.0],  # beyond bottom / right
        [-5.0, 100.0, 261.0, 140.0],  # taller than the image
        [10.3, 20.7, 10.9, 21.1],  # < 1 px
        [0.0, 0.0, 256.0, 320.0],  # the whole image (P4)
        [-100.0, -100.0, 500.0, 600.0],  # P5, mostly outside
        [40.0, 40.0, 152.0, 152.0],  # sqrt(area) = 112: exactly the P2/P3 boundary
        [254.0, 318.0, 258.0, 322.0],  # straddles the bottom-right corner
    ])
    boxes[:, :len(special)] = special
    return boxes.astype(np.float32)




def torch_features(features):
    return [torch.from_numpy(np.asarray(f)).permute(0, 3, 1, 2).contiguous() for f in features]


def torch_boxes(boxes):
    """[B, N, 4] [y1, x1, y2, x2] → list of B [N, 4] (x1, y1, x2, y2) tensors."""
    return [torch.from_numpy(np.ascontiguousarray(b[:, [1, 0, 3, 2]])) for b in boxes]


def from_torch(out, batch, num):
    """[B*N, C, S, S] → [B, N, S, S, C]."""
    out = out.permute(0, 2, 3, 1).numpy()
    return out.reshape((batch, num) + out.shape[1:])


# ------------------------------------------------------------------------------------ map_roi_levels


def test_map_roi_levels_boundaries():
    def box(scale):  # square box with sqrt(area) = scale
        return [0.0, 0.0, scale, scale]

    # log2(s / 56): 112 → 1 exactly, 111.9 → 0.999; 224 → 2; 448 → 3; larger is clamped to 3.
    boxes = tf.constant([[box(s) for s in (10, 111.9, 112, 223.9, 224, 447.9, 448, 2000)]], tf.float32)
    np.testing.assert_array_equal(R.map_roi_levels(boxes, 4), [[0, 0, 1, 1, 2, 2, 3, 3]])
    np.testing.assert_array_equal(R.map_roi_levels(boxes, 2), [[0, 0, 1, 1, 1, 1, 1, 1]])
    # Elongated 56 x 224 has sqrt(area) = 112 → 1; empty and inverted boxes → 0.
    odd = tf.constant([[[0, 0, 56, 224], [5, 5, 5, 5], [10, 10, 0, 0]]], tf.float32)
    np.testing.assert_array_equal(R.map_roi_levels(odd, 4), [[1, 0, 0]])


def test_map_roi_levels_matches_torchvision():
    from torchvision.ops.poolers import LevelMapper

    boxes = make_boxes(np.random.default_rng(1), 1, 300)
    expected = LevelMapper(2, 5)(torch_boxes(boxes)).numpy()
    np.testing.assert_array_equal(R.map_roi_levels(tf.constant(boxes), 4)[0], expected)


# ------------------------------------------------------------------------------- RoIAlign by hand


def test_roi_align_hand_unaligned():
    # 4x4 map, value 10*row + col; box [0, 0, 4, 4], 2x2 bins of 2 px.
    f, box = grid_feature(4, 4), tf.constant([[[0.0, 0.0, 4.0, 4.0]]])
    # sr=1: one sample per bin at its centre, y, x in {1, 3}: 10y + x. (y = 3 has floor(y) = H-1: row 3.)
    out = R.roi_align(f, box, 2, sampling_ratio=1, aligned=False)
    np.testing.assert_allclose(out[0, 0, :, :, 0], [[11, 13], [31, 33]], atol=1e-5)
    # sr=2: samples at 0.5, 1.5 | 2.5, 3.5. The map is linear, so a bin is 10*mean(y) + mean(x), except that
    # 3.5 > H-1 reads row (column) 3, so the second bin's mean coordinate is (2.5 + 3) / 2 = 2.75, not 3:
    # [[10 + 1, 10 + 2.75], [27.5 + 1, 27.5 + 2.75]].
    out = R.roi_align(f, box, 2, sampling_ratio=2, aligned=False)
    np.testing.assert_allclose(out[0, 0, :, :, 0], [[11, 12.75], [28.5, 30.25]], atol=1e-5)


def test_roi_align_hand_aligned_and_spatial_scale():
    f = grid_feature(4, 4)
    # aligned: [0.5, 0.5, 2.5, 2.5] - 0.5 = [0, 0, 2, 2]; bins of 1 px, sr=1 samples at 0.5 and 1.5:
    # 10*0.5 + 0.5 = 5.5, 5.5 + 1 = 6.5, 15.5, 16.5.
    out = R.roi_align(f, tf.constant([[[0.5, 0.5, 2.5, 2.5]]]), 2, sampling_ratio=1, aligned=True)
    np.testing.assert_allclose(out[0, 0, :, :, 0], [[5.5, 6.5], [15.5, 16.5]], atol=1e-5)
    # The same RoI given in input pixels of stride 2: [1, 1, 5, 5] * 0.5 = [0.5, 0.5, 2.5, 2.5].
    out = R.roi_align(f, tf.constant([[[1.0, 1.0, 5.0, 5.0]]]), 2, sampling_ratio=1, spatial_scale=0.5)
    np.testing.assert_allclose(out[0, 0, :, :, 0], [[5.5, 6.5], [15.5, 16.5]], atol=1e-5)


def test_roi_align_samples_outside_contribute_zero():
    f = grid_feature(4, 4)
    # One bin, sr=2, x samples at 1 and 3 (values +1, +3). Box y [-3, 1]: y samples -2 and 0.
    # y = -2 < -1 is dropped but counted: (0 + 0 + (0 + 1) + (0 + 3)) / 4 = 1.
    out = R.roi_align(f, tf.constant([[[-3.0, 0.0, 1.0, 4.0]]]), 1, sampling_ratio=2, aligned=False)
    np.testing.assert_allclose(out[0, 0, 0, 0, 0], 1.0, atol=1e-5)
    # Box y [-1, 1]: samples -0.5 (in [-1, 0]: reads row 0) and 0.5: (10*0 + 10*0.5) / 2 + (1 + 3) / 2 = 4.5.
    out = R.roi_align(f, tf.constant([[[-1.0, 0.0, 1.0, 4.0]]]), 1, sampling_ratio=2, aligned=False)
    np.testing.assert_allclose(out[0, 0, 0, 0, 0], 4.5, atol=1e-5)
    # Box y [3, 5.4]: samples 3.6 (in [H-1, H]: row 3) and 4.8 > H = 4 (dropped): ((30+1) + (30+3)) / 4 = 16.
    out = R.roi_align(f, tf.constant([[[3.0, 0.0, 5.4, 4.0]]]), 1, sampling_ratio=2, aligned=False)
    np.testing.assert_allclose(out[0, 0, 0, 0, 0], 16.0, atol=1e-5)


def test_roi_align_one_pixel_map():
    f = tf.fill([1, 1, 1, 1], 7.0)
    # Every sample in [0, 1] reads the single pixel.
    out = R.roi_align(f, tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), 2, sampling_ratio=2, aligned=False)
    np.testing.assert_allclose(out[0, 0, :, :, 0], np.full((2, 2), 7.0), atol=1e-6)
    # Box [-2, 3] on both axes, one bin, sr=2: samples -0.75 (kept) and 1.75 (> H = 1, dropped) per axis,
    # so 1 of the 4 samples is valid: 7 / 4.
    out = R.roi_align(f, tf.constant([[[-2.0, -2.0, 3.0, 3.0]]]), 1, sampling_ratio=2, aligned=False)
    np.testing.assert_allclose(out[0, 0, 0, 0, 0], 1.75, atol=1e-6)


@pytest.mark.parametrize("aligned", [True, False])
def test_multilevel_constant_features(aligned):
    features = [tf.fill([1, IMAGE[0] // s, IMAGE[1] // s, 2], 3.0) for s in STRIDES]
    boxes = tf.constant([[[8, 8, 40, 50], [10, 20, 150, 160], [4, 4, 250, 310], [100, 100, 101, 101]]],
                        tf.float32)  # levels 0, 1, 2 and a sub-pixel box
    out = R.multilevel_roi_align(features, boxes, 7, sampling_ratio=2, aligned=aligned)
    np.testing.assert_allclose(out, np.full((1, 4, 7, 7, 2), 3.0), atol=1e-5)


def test_sampling_ratio_must_be_positive_int():
    f, box = grid_feature(4, 4), tf.constant([[[0.0, 0.0, 4.0, 4.0]]])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="adaptive sampling"):
            R.roi_align(f, box, 2, sampling_ratio=bad)


# ------------------------------------------------------------------------ RoIAlign vs torchvision


@pytest.mark.parametrize("output_size", [7, 14])
def test_multilevel_unaligned_matches_torchvision(output_size):
    rng = np.random.default_rng(output_size)
    batch, num = 2, 48
    features, boxes = pyramid(rng, batch), make_boxes(rng, batch, num)
    pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=output_size, sampling_ratio=2)
    named = OrderedDict((str(i), f) for i, f in enumerate(torch_features(features)))
    expected = from_torch(pooler(named, torch_boxes(boxes), [IMAGE] * batch), batch, num)
    out = R.multilevel_roi_align([tf.constant(f) for f in features], tf.constant(boxes), output_size,
                                 sampling_ratio=2, aligned=False)
    assert out.shape == (batch, num, output_size, output_size, 3)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_flat_rois_with_image_indices_equal_the_batched_ones():
    # The batch's RoIs as one list (what the mask head trains on): box n of image b pools what it pools in
    # the [B, N, 4] layout, and so does the gradient to the features.
    rng = np.random.default_rng(5)
    batch, num = 2, 12
    features = [tf.constant(f) for f in pyramid(rng, batch)]
    boxes = tf.constant(make_boxes(rng, batch, num))
    pairs = [(0, 0), (0, 3), (0, 4), (0, 11), (1, 1), (1, 2)]  # (image, box): 4 RoIs of image 0, 2 of image 1
    flat_boxes = tf.constant([boxes[b, n].numpy() for b, n in pairs])
    images = tf.constant([b for b, _ in pairs], tf.int32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(features)
        batched = R.multilevel_roi_align(features, boxes, 7, sampling_ratio=2)
        flat = R.multilevel_roi_align(features, flat_boxes, 7, sampling_ratio=2, image_indices=images)
        picked = tf.stack([batched[b, n] for b, n in pairs])
        losses = [tf.reduce_sum(t ** 2) for t in (flat, picked)]
    assert flat.shape == (len(pairs), 7, 7, 3)
    np.testing.assert_allclose(flat, picked, rtol=1e-6, atol=1e-6)
    grads = [tape.gradient(loss, features) for loss in losses]
    assert [g is None for g in grads[0]] == [g is None for g in grads[1]]
    assert any(g is not None for g in grads[0])
    for a, b in zip(*grads):
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
def test_multilevel_aligned_matches_torchvision_per_level(sampling_ratio):
    rng = np.random.default_rng(10 + sampling_ratio)
    batch, num = 2, 40
    features, boxes = pyramid(rng, batch), make_boxes(rng, batch, num)
    out = R.multilevel_roi_align([tf.constant(f) for f in features], tf.constant(boxes), 7,
                                 sampling_ratio=sampling_ratio, aligned=True).numpy()
    levels = R.map_roi_levels(tf.constant(boxes), 4).numpy()
    assert len(np.unique(levels)) == 4  # every level is exercised
    for level, (f, stride) in enumerate(zip(torch_features(features), STRIDES)):
        expected = from_torch(torchvision.ops.roi_align(
            f, torch_boxes(boxes), 7, spatial_scale=1 / stride, sampling_ratio=sampling_ratio, aligned=True),
            batch, num)
        np.testing.assert_allclose(out[levels == level], expected[levels == level], atol=1e-4, rtol=0)


@pytest.mark.parametrize("aligned", [True, False])
def test_single_level_matches_torchvision(aligned):
    rng = np.random.default_rng(3)
    features = rng.standard_normal((2, 13, 1, 2)).astype(np.float32)  # odd sizes, a 1-pixel-wide map
    boxes = (rng.uniform(-6, 30, (2, 20, 4))).astype(np.float32)  # includes inverted boxes
    expected = from_torch(torchvision.ops.roi_align(
        torch_features([features])[0], torch_boxes(boxes), (3, 5), spatial_scale=0.5, sampling_ratio=2,
        aligned=aligned), 2, 20)
    out = R.roi_align(tf.constant(features), tf.constant(boxes), (3, 5), sampling_ratio=2, aligned=aligned,
                      spatial_scale=0.5)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_gradient_matches_torchvision():
    rng = np.random.default_rng(4)
    batch, num = 1, 24
    features, boxes = pyramid(rng, batch, channels=2), make_boxes(rng, batch, num)
    weights = rng.standard_normal((batch, num, 7, 7, 2)).astype(np.float32)
    tf_features = [tf.constant(f) for f in features]
    with tf.GradientTape() as tape:
        tape.watch(tf_features)
        out = R.multilevel_roi_align(tf_features, tf.constant(boxes), 7, sampling_ratio=2, aligned=False)
        loss = tf.reduce_sum(out * weights)
    grads = tape.gradient(loss, tf_features)
    torch_feats = [f.requires_grad_() for f in torch_features(features)]
    pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    ref = pooler(OrderedDict((str(i), f) for i, f in enumerate(torch_feats)), torch_boxes(boxes), [IMAGE])
    (ref * torch.from_numpy(weights.reshape(num, 7, 7, 2)).permute(0, 3, 1, 2)).sum().backward()
    for g, f in zip(grads, torch_feats):
        np.testing.assert_allclose(g, f.grad.permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------ RoIPool


def test_roi_pool_hand_computed():
    f = grid_feature(4, 4)
    # [0, 0, 3, 3]: rounded 0..3, size 4, bin 2: bins [0, 2) and [2, 4); max at each bin's last pixel.
    out = R.roi_pool(f, tf.constant([[[0.0, 0.0, 3.0, 3.0]]]), 2)
    np.testing.assert_array_equal(out[0, 0, :, :, 0], [[11, 13], [31, 33]])
    # [0, 0, 2, 2]: size 3, bin 1.5: [floor(0), ceil(1.5)) = [0, 2), [floor(1.5), ceil(3)) = [1, 3) (overlap).
    out = R.roi_pool(f, tf.constant([[[0.0, 0.0, 2.0, 2.0]]]), 2)
    np.testing.assert_array_equal(out[0, 0, :, :, 0], [[11, 12], [21, 22]])
    # Stride 2: [2, 2, 6.2, 6.2] * 0.5 = [1, 1, 3.1, 3.1] → 1..3, size 3: [1, 3) and [2, 4).
    out = R.roi_pool(f, tf.constant([[[2.0, 2.0, 6.2, 6.2]]]), 2, spatial_scale=0.5)
    np.testing.assert_array_equal(out[0, 0, :, :, 0], [[22, 23], [32, 33]])


def test_roi_pool_rounding_and_empty_bins():
    f = grid_feature(4, 4, base=100.0)
    boxes = tf.constant([[
        [0.0, 0.5, 0.0, 0.5],  # round(0.5) = 1 (half away from zero, not to even): pixel (0, 1) = 101
        [0.0, 2.5, 0.0, 2.5],  # round(2.5) = 3: pixel (0, 3) = 103
        [0.0, -1.5, 0.0, -0.5],  # x: -2..-1, size 2, bin [-2, 0) clipped to [0, 0): empty → 0
        [10.0, 10.0, 12.0, 12.0],  # outside: every bin clipped to [4, 4) → 0
    ]])
    out = R.roi_pool(f, boxes, 1)
    np.testing.assert_array_equal(out[0, :, 0, 0, 0], [101, 103, 0, 0])
    # With no pixel in any bin at all, the gathered grid has zero extent; the result is still zeros.
    out = R.roi_pool(f, boxes[:, 3:], 3)
    np.testing.assert_array_equal(out, np.zeros((1, 1, 3, 3, 1)))


@pytest.mark.parametrize("spatial_scale", [1.0, 0.25, 0.5])
def test_roi_pool_matches_torchvision(spatial_scale):
    rng = np.random.default_rng(5)
    features = rng.standard_normal((2, 24, 30, 3)).astype(np.float32)
    boxes = make_boxes(rng, 2, 30) * np.float32(30 / 320 / spatial_scale)
    boxes[:, -4:] = np.round(boxes[:, -4:] * 2) / 2  # ties at .5 after scaling by 1, 1/2, 1/4
    expected = from_torch(torchvision.ops.roi_pool(
        torch_features([features])[0], torch_boxes(boxes), 7, spatial_scale), 2, 30)
    out = R.roi_pool(tf.constant(features), tf.constant(boxes), 7, spatial_scale=spatial_scale)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("output_size", [3, 7, 14])
def test_roi_pool_bin_bounds_exact_in_tf_function(output_size):
    # Integer boxes of every length 1..64: many bins have p * length / S exactly integral, where a float32
    # quotient that is off by one ulp (grappler's x / c → x * (1 / c)) would move a bound by a pixel.
    rng = np.random.default_rng(8)
    features = rng.standard_normal((1, 64, 64, 2)).astype(np.float32)
    sides = np.arange(64, dtype=np.float32)
    boxes = np.stack([0 * sides, 0 * sides, sides, 63 - sides], -1)[None]
    expected = from_torch(torchvision.ops.roi_pool(
        torch_features([features])[0], torch_boxes(boxes), output_size, 1.0), 1, 64)
    pool = tf.function(lambda f, b: R.roi_pool(f, b, output_size))
    np.testing.assert_array_equal(pool(tf.constant(features), tf.constant(boxes)), expected)
    np.testing.assert_array_equal(R.roi_pool(tf.constant(features), tf.constant(boxes), output_size), expected)


def test_multilevel_roi_pool_matches_torchvision_per_level():
    rng = np.random.default_rng(6)
    features, boxes = pyramid(rng, 2), make_boxes(rng, 2, 30)
    out = R.multilevel_roi_pool([tf.constant(f) for f in features], tf.constant(boxes), 7).numpy()
    levels = R.map_roi_levels(tf.constant(boxes), 4).numpy()
    for level, (f, stride) in enumerate(zip(torch_features(features), STRIDES)):
        expected = from_torch(torchvision.ops.roi_pool(f, torch_boxes(boxes), 7, 1 / stride), 2, 30)
        np.testing.assert_array_equal(out[levels == level], expected[levels == level])


# ---------------------------------------------------------------------------------------- properties


@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 3), num=st.integers(1, 5), size=st.integers(1, 4), channels=st.integers(1, 3),
       sr=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_output_shapes(batch, num, size, channels, sr, seed):
    rng = np.random.default_rng(seed)
    features = [tf.constant(rng.standard_normal((batch, 64 // s, 80 // s, channels)), tf.float32)
                for s in STRIDES]
    boxes = tf.constant(rng.uniform(0, 64, (batch, num, 4)), tf.float32)
    expected = (batch, num, size, size, channels)
    assert R.multilevel_roi_align(features, boxes, size, sampling_ratio=sr).shape == expected
    assert R.multilevel_roi_pool(features, boxes, size).shape == expected
    assert R.roi_align(features[0], boxes, size, sampling_ratio=sr).shape == expected
    assert R.roi_pool(features[0], boxes, size).shape == expected


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), size=st.integers(1, 7), sr=st.integers(1, 3),
       slope=st.tuples(st.floats(-3, 3), st.floats(-3, 3), st.floats(-10, 10)))
def test_aligned_on_linear_features_is_the_bin_mean(seed, size, sr, slope):
    # f(y, x) = a*y + b*x + c at pixel (y, x) of each level. Bilinear interpolation is exact on it, so
    # a bin's value is f at the bin centre: start + (p + 0.5) * bin in that level's pixels.
    a, b, c = slope
    rng = np.random.default_rng(seed)
    features = []
    for s in STRIDES:
        rows, cols = np.meshgrid(np.arange(IMAGE[0] // s), np.arange(IMAGE[1] // s), indexing="ij")
        features.append(tf.constant((a * rows + b * cols + c)[None, :, :, None], tf.float32))
    # Boxes well inside: aligned samples stay within [0, H_l - 1] on every level (>= 1 px margin at P5).
    y1, x1 = rng.uniform(40, 120, (2, 1, 6))
    h, w = rng.uniform(1, 96, (2, 1, 6))
    boxes = np.stack([y1, x1, y1 + h, x1 + w], -1).astype(np.float32)
    out = R.multilevel_roi_align(features, tf.constant(boxes), size, sampling_ratio=sr, aligned=True).numpy()
    scale = 1.0 / np.array(STRIDES)[R.map_roi_levels(tf.constant(boxes), 4).numpy()]  # [1, 6]
    centres = (np.arange(size) + 0.5) / size
    ys = (boxes[..., 0] * scale - 0.5)[..., None] + (h * scale)[..., None] * centres  # [1, 6, size]
    xs = (boxes[..., 1] * scale - 0.5)[..., None] + (w * scale)[..., None] * centres
    expected = a * ys[..., :, None] + b * xs[..., None, :] + c
    np.testing.assert_allclose(out[..., 0], expected, atol=2e-4, rtol=1e-5)


def test_tf_function_matches_eager_with_dynamic_shapes():
    rng = np.random.default_rng(7)
    features = [tf.constant(f) for f in pyramid(rng, 2, channels=2)]
    boxes = tf.constant(make_boxes(rng, 2, 12))
    spec = [tf.TensorSpec([None, None, None, 2], tf.float32)] * 4
    align = tf.function(lambda f, b: R.multilevel_roi_align(f, b, 7, aligned=False),
                        input_signature=[spec, tf.TensorSpec([None, None, 4], tf.float32)])
    pool = tf.function(lambda f, b: R.multilevel_roi_pool(f, b, 7),
                       input_signature=[spec, tf.TensorSpec([None, None, 4], tf.float32)])
    np.testing.assert_allclose(align(features, boxes),
                               R.multilevel_roi_align(features, boxes, 7, aligned=False), atol=1e-6)
    np.testing.assert_array_equal(pool(features, boxes), R.multilevel_roi_pool(features, boxes, 7))
    # With static inputs the output shape is static too.
    static = tf.function(lambda f, b: R.multilevel_roi_align(f, b, 7)).get_concrete_function(features, boxes)
    assert static.structured_outputs.shape == (2, 12, 7, 7, 2)
    static = tf.function(lambda f, b: R.multilevel_roi_pool(f, b, 7)).get_concrete_function(features, boxes)
    assert static.structured_outputs.shape == (2, 12, 7, 7, 2)


def test_half_precision_features_keep_their_dtype():
    f = tf.cast(grid_feature(4, 4), tf.float16)
    out = R.roi_align(f, tf.constant([[[0.0, 0.0, 4.0, 4.0]]]), 2, sampling_ratio=1, aligned=False)
    assert out.dtype == tf.float16
    np.testing.assert_allclose(tf.cast(out[0, 0, :, :, 0], tf.float32), [[11, 13], [31, 33]], atol=1e-2)


def test_crop_and_resize_gradient_is_exact_with_many_overlapping_boxes():
    """TensorFlow's CPU gradient of crop_and_resize loses updates when crops overlap (tensorflow#42033: 3000 boxes
    on a 6x6 map gave errors of 8-13 against gradients of about 60); ours must equal J^T U, J from one-hot images
    (crop_and_resize is linear in the image)."""
    from tfrcnn.ops.roi_align import crop_and_resize
    rng = np.random.default_rng(0)
    height = width = 6
    num, channels, size = 3000, 4, (7, 5)
    image = tf.constant(rng.normal(size=(2, height, width, channels)), tf.float32)
    corners = np.sort(rng.uniform(-0.2, 1.2, (num, 2, 2)), axis=1)  # some samples fall outside: no gradient
    boxes = tf.constant(np.stack([corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0], corners[:, 1, 1]], 1),
                        tf.float32)
    box_indices = tf.constant(rng.integers(0, 2, num), tf.int32)
    upstream = rng.normal(size=(num, *size, channels))
    with tf.GradientTape() as tape:
        tape.watch(image)
        crops = crop_and_resize(image, boxes, box_indices, size)
        loss = tf.reduce_sum(crops * tf.constant(upstream, tf.float32))
    grad = tape.gradient(loss, image).numpy()
    np.testing.assert_array_equal(crops, tf.image.crop_and_resize(image, boxes, box_indices, size))

    pixels = np.eye(2 * height * width, dtype=np.float32).reshape(-1, 2, height, width, 1)
    expected = np.zeros((2 * height * width, channels))
    for p, onehot in enumerate(pixels):
        weights = tf.image.crop_and_resize(onehot, boxes, box_indices, size).numpy()[..., 0].astype(np.float64)
        expected[p] = np.einsum("khw,khwc->c", weights, upstream)
    np.testing.assert_allclose(grad.reshape(-1, channels), expected, atol=2e-4 * np.abs(expected).max())


@pytest.fixture
def op_determinism(restores_op_determinism):
    """TensorFlow's op determinism on for one test (under it, the gradient is TensorFlow's kernel)."""
    tf.config.experimental.enable_op_determinism()


def test_kernel_gradient_under_op_determinism_only_without_a_gpu(op_determinism, monkeypatch):
    assert R._kernel_gradient_is_exact()
    # TensorFlow's GPU kernel of the gradient has no deterministic version (it raises under op determinism).
    monkeypatch.setattr(tf.config, "list_logical_devices",
                        lambda kind=None: [tf.config.LogicalDevice("/device:GPU:0", "GPU")] if kind == "GPU" else [])
    assert not R._kernel_gradient_is_exact()


def test_segment_sum_gradient_without_op_determinism(restores_op_determinism):
    restores_op_determinism.disable_op_determinism()
    assert not R._kernel_gradient_is_exact()


def test_kernel_gradient_matches_torchvision(op_determinism):
    test_gradient_matches_torchvision()


def test_kernel_gradient_is_exact_with_many_overlapping_boxes(op_determinism):
    # One thread under op determinism: no update is lost, where two threads lost 8-13 of about 60 (see above).
    test_crop_and_resize_gradient_is_exact_with_many_overlapping_boxes()
