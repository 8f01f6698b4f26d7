"""Tests for tfrcnn.ops.image: keep-ratio rescaled sizes, normalization, padding."""
import numpy as np
import tensorflow as tf

from tfrcnn.config import Config, ImgNormCfg
from tfrcnn.ops.image import denormalize, normalize, pad_to, rescaled_size, round_up


def test_torchvision_resize_floors_its_sides_in_float64():
    """torchvision: scale = min(800 / short, 1333 / long), sides floor(side * scale) computed in float64."""
    cfg = Config.from_dict({"data": {"img_scale": [1333, 800], "resize_rounding": "floor", "test_padding": "size_divisor"}})
    sizes = lambda h, w, c=cfg: tuple(rescaled_size(h, w, 1333.0, 800.0, rounding=c.data.resize_rounding).numpy())  # noqa: E731
    assert sizes(480, 640) == (800, 1066)  # 640 * 5/3 = 1066.67
    assert sizes(427, 640) == (800, 1199)  # 640 * 800/427 = 1199.06
    assert sizes(300, 1000) == (399, 1333)  # the long side binds: 300 * 1.333 = 399.9
    assert sizes(1066, 800) == (1066, 800)  # scale 1.0 exactly
    half_up = Config.from_dict({"data": {"img_scale": [1333, 800]}})
    assert sizes(480, 640, half_up) == (800, 1067)  # MMDetection rounds half up
    # float32 would make 480 * (800 / 480) = 799.99994 and floor it to 799
    assert sizes(480, 481) == (800, 801)


def test_rescaled_size_fits_the_canvas_and_keeps_or_ignores_the_ratio():
    # (1333, 800) on 600 x 400: factor min(1333 / 600, 800 / 400) = 2 → 1200 x 800; a 1024 x 1024 canvas makes it
    # min(2, 1024 / 600, 1024 / 400) = 1.7067 → 1024 x 683 (683 = int(400 * 1.7067 + 0.5)).
    assert tuple(rescaled_size(600, 400, 1333, 800).numpy()) == (1200, 800)
    assert tuple(rescaled_size(600, 400, 1333, 800, fit=(1024, 1024)).numpy()) == (1024, 683)
    # without keep_ratio the scale is (short, long) as given, MMDetection's (w, h)
    assert tuple(rescaled_size(600, 400, 1333, 800, keep_ratio=False).numpy()) == (800, 1333)
    assert tuple(rescaled_size(600, 400, 1333, 800, keep_ratio=False, fit=(640, 640)).numpy()) == (640, 640)


def test_normalize_rgb_and_caffe_bgr():
    pixel = tf.constant([[[10.0, 20.0, 30.0]]])
    np.testing.assert_allclose(normalize(pixel, ImgNormCfg(mean=(1, 2, 3), std=(3, 6, 9))), [[[3, 3, 3]]])
    # to_rgb false: the channels are reversed first, mean and std are in BGR order
    np.testing.assert_allclose(normalize(pixel, ImgNormCfg(mean=(3, 2, 1), std=(9, 6, 3), to_rgb=False)),
                               [[[3, 3, 3]]])


def test_pad_to_pads_bottom_right_with_static_shapes():
    image = tf.ones([2, 3, 1])
    padded = pad_to(image, 4, 5)
    assert padded.shape == (4, 5, 1) and float(tf.reduce_sum(padded)) == 6 and float(padded[1, 2, 0]) == 1
    batch = pad_to(tf.ones([2, 2, 3, 1]), tf.constant(4), 5)
    assert tuple(batch.shape) == (2, 4, 5, 1) and float(tf.reduce_sum(batch)) == 12
    np.testing.assert_array_equal(round_up(tf.constant([1, 32, 33]), 32), [32, 32, 64])


def test_denormalize_inverts_normalize_to_uint8_rgb():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    for to_rgb in (True, False):
        norm = ImgNormCfg(mean=(103.53, 116.28, 123.675), std=(1.0, 2.0, 3.0), to_rgb=to_rgb)
        back = denormalize(normalize(tf.constant(pixels, tf.float32), norm), norm)
        assert back.dtype == tf.uint8
        np.testing.assert_array_equal(back.numpy(), pixels)
