import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from tfrcnn.ops.anchors import AnchorGenerator, feature_map_size

SEED_CFG = dict(strides=(4, 8, 16, 32, 64), ratios=(0.5, 1.0, 2.0), scales=(8,))


def test_feature_map_size_halves_with_ceil():
    # 800 → 400 → 200 (P2) → 100 → 50 → 25 (P5) → 13 (P6); 1216 → … → 38 (P5) → 19 (P6).
    assert feature_map_size((800, 1216), 4) == (200, 304)
    assert feature_map_size((800, 1216), 32) == (25, 38)
    assert feature_map_size((800, 1216), 64) == (13, 19)
    with pytest.raises(ValueError):
        feature_map_size((64, 64), 12)


def test_base_anchors_hand_computed():
    gen = AnchorGenerator(**SEED_CFG)
    # Level 0: size 4 * scale 8 = 32. Ratio r = h / w keeps the area: h = 32 sqrt(r), w = 32 / sqrt(r).
    # r = 0.5: h = 22.627, w = 45.255 → [y1, x1, y2, x2] = [-11.31, -22.63, 11.31, 22.63].
    s = np.sqrt(0.5)
    expected = np.array([[-16 * s, -16 / s, 16 * s, 16 / s], [-16, -16, 16, 16], [-16 / s, -16 * s, 16 / s, 16 * s]])
    np.testing.assert_allclose(gen.base_anchors(0), expected, rtol=1e-12)
    # torchvision rounds them (half to even): its [x1,y1,x2,y2] [[-23,-11,23,11],[-16,-16,16,16],[-11,-23,11,23]].
    rounded = AnchorGenerator(**SEED_CFG, round_base_anchors=True).base_anchors(0)
    np.testing.assert_array_equal(rounded, [[-11, -23, 11, 23], [-16, -16, 16, 16], [-23, -11, 23, 11]])


def test_anchor_layout_hand_computed():
    # A 16×8 input at stride 8 gives a 2×1 map; centres (0, 0) and (8, 0); 3 ratios per location.
    gen = AnchorGenerator(strides=(8,), ratios=(0.5, 1.0, 2.0), scales=(1,))
    (anchors,) = gen((16, 8))
    assert anchors.shape == (6, 4)
    # Second location, ratio 1: an 8×8 box centred at (y, x) = (8, 0).
    np.testing.assert_allclose(anchors[4], [4, -4, 12, 4])
    np.testing.assert_allclose(anchors[3] - anchors[0], [8, 0, 8, 0])  # row-major: next row, same anchor


def test_octave_scales_and_center_offset():
    # RetinaNet style: octave_base_scale 4, 3 scales per octave → 4, 4·2^(1/3), 4·2^(2/3).
    gen = AnchorGenerator(strides=(8,), ratios=(1.0,), octave_base_scale=4, scales_per_octave=3, center_offset=0.5)
    (anchors,) = gen((8, 8))
    sizes = 8 * 4 * 2 ** (np.arange(3) / 3)
    np.testing.assert_allclose(anchors[:, 2] - anchors[:, 0], sizes, rtol=1e-6)
    np.testing.assert_allclose((anchors[:, 0] + anchors[:, 2]) / 2, 4.0)  # centre at (0 + 0.5) * 8
    with pytest.raises(ValueError):
        AnchorGenerator(strides=(8,), ratios=(1.0,), scales=(1,), octave_base_scale=4, scales_per_octave=3)


def test_scale_major_order():
    # scale_major=True: ratio outer, scale inner (MMDetection's meaning of the flag).
    major = AnchorGenerator(strides=(4,), ratios=(0.5, 2.0), scales=(1, 2)).base_anchors(0)
    minor = AnchorGenerator(strides=(4,), ratios=(0.5, 2.0), scales=(1, 2), scale_major=False).base_anchors(0)
    np.testing.assert_allclose(major[[0, 2, 1, 3]], minor)


def test_equals_torchvision_for_800x1216():
    """torchvision's AnchorGenerator on an 800×1216 padded batch, all five levels in the same order."""
    image_size = (800, 1216)
    gen = AnchorGenerator(**SEED_CFG, round_base_anchors=True, strides_from_feature_size=True)
    feature_sizes = [feature_map_size(image_size, s) for s in SEED_CFG["strides"]]
    ours = np.concatenate([a.numpy() for a in gen(image_size)])

    tv = TorchAnchorGenerator(sizes=((32,), (64,), (128,), (256,), (512,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    images = ImageList(torch.zeros(1, 3, *image_size), [image_size])
    features = [torch.zeros(1, 1, h, w) for h, w in feature_sizes]
    theirs = tv(images, features)[0].numpy()[:, [1, 0, 3, 2]]  # (x1, y1, x2, y2) → (y1, x1, y2, x2)
    assert ours.shape == theirs.shape == (sum(3 * h * w for h, w in feature_sizes), 4)
    np.testing.assert_array_equal(ours, theirs)
    # P6 is 13 × 19, so torchvision's P6 strides are (800 // 13, 1216 // 19) = (61, 64), not 64.
    assert gen.level_strides(image_size, feature_sizes)[4] == (61, 64)


@pytest.mark.parametrize("torchvision_strides", [False, True])
def test_sizes_known_only_at_run_time_give_the_static_anchors(torchvision_strides):
    """Inference on any image size computes the anchors in the graph: the same values as the numpy constants."""
    import tensorflow as tf

    gen = AnchorGenerator(**SEED_CFG, round_base_anchors=True, strides_from_feature_size=torchvision_strides)
    image_size = (800, 1216)
    feature_sizes = [feature_map_size(image_size, s) for s in SEED_CFG["strides"]]
    static = gen(image_size, feature_sizes)

    @tf.function(input_signature=[tf.TensorSpec([2], tf.int32), tf.TensorSpec([5, 2], tf.int32)])
    def dynamic(size, sizes):
        return gen((size[0], size[1]), [(sizes[i, 0], sizes[i, 1]) for i in range(5)])

    for ours, expected in zip(dynamic(tf.constant(image_size), tf.constant(feature_sizes)), static):
        np.testing.assert_array_equal(ours.numpy(), expected.numpy())
