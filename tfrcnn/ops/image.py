"""Image geometry shared by training and test-time preprocessing: keep-ratio rescaled sizes, normalization,
bilinear resizing, and zero padding at the bottom and right (images sit top-left in the padded network input).

Images are [h, w, 3] (or batches [B, h, w, 3] where said); sizes are (height, width).
"""
import tensorflow as tf


def rescaled_size(height, width, long_side, short_side, keep_ratio=True, rounding="half_up", fit=None):
    """int32 (new_h, new_w): an (h, w) image rescaled to a (long, short) scale. Scalars in.

    keep_ratio: factor min(long / max(h, w), short / min(h, w)), and with `fit` ((H, W) ints, the static canvas)
    also small enough to fit it; sides rounded as `rounding` says, "half_up" int(side * factor + 0.5) as
    MMDetection, or "floor" as torchvision (F.interpolate with a scale factor: 480x640 -> 800x1066), in float64 as
    both compute them (in float32, 480 * (800 / 480) is 799.99994). Without keep_ratio (short, long) literally, as
    MMDetection's (w, h) img_scale.
    """
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    long_side, short_side = tf.cast(long_side, tf.float64), tf.cast(short_side, tf.float64)
    if keep_ratio:
        factor = tf.minimum(long_side / tf.maximum(h, w), short_side / tf.minimum(h, w))
        if fit is not None:
            factor = tf.minimum(factor, tf.minimum(fit[0] / h, fit[1] / w))
        new = tf.floor(tf.stack([h, w]) * factor + (0.5 if rounding == "half_up" else 0.0))
    else:
        new = tf.stack([short_side, long_side])
    new = tf.maximum(new, 1.0)
    if fit is not None:
        new = tf.minimum(new, [float(s) for s in fit])
    return tf.cast(new, tf.int32)


def normalize(image, norm):
    """float32 [..., 3] RGB in 0..255 → (image - mean) / std, BGR first when norm.to_rgb is false (caffe-style
    weights take BGR, with the mean and std in BGR order). norm: `data.img_norm_cfg`."""
    if not norm.to_rgb:
        image = image[..., ::-1]
    return (image - tf.constant(norm.mean, tf.float32)) / tf.constant(norm.std, tf.float32)


def denormalize(image, norm):
    """`normalize`'s inverse for looking at a network input: float32 [..., 3] → uint8 RGB (rounded, clipped)."""
    pixels = image * tf.constant(norm.std, tf.float32) + tf.constant(norm.mean, tf.float32)
    if not norm.to_rgb:  # caffe style feeds BGR: back to RGB
        pixels = pixels[..., ::-1]
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)


def resize_and_normalize(image, size, norm, normalize_first=False):
    """A decoded RGB image [h, w, 3] (0..255) bilinearly resized to `size` (half-pixel centres, no antialias) and
    normalized, normalizing first when `normalize_first` (torchvision's order; bilinear weights sum to 1, so the two
    orders differ only by float rounding): float32 [new_h, new_w, 3]."""
    image = tf.cast(image, tf.float32)
    if normalize_first:
        return tf.image.resize(normalize(image, norm), size, method="bilinear")
    return normalize(tf.image.resize(image, size, method="bilinear"), norm)


def pad_to(images, height, width):
    """[h, w, C] or [B, h, w, C] zero-padded at the bottom and right to (height, width), static where those are
    ints."""
    size = tf.shape(images)
    rows, cols = images.shape.rank - 3, images.shape.rank - 2
    # tf.pad: half the time of pad_to_bounding_box, which pads through a generic slice-and-concat
    padding = [[0, 0]] * rows + [[0, height - size[rows]], [0, width - size[cols]], [0, 0]]
    static = [height if isinstance(height, int) else None, width if isinstance(width, int) else None]
    # ensure_shape, not set_shape: the graph itself then knows the static sides, which lets grappler fuse a
    # ResNet block's residual add and ReLU into its convolution (it cannot prove unknown sides equal).
    shape = images.shape.as_list()
    return tf.ensure_shape(tf.pad(images, padding), shape[:rows] + static + shape[-1:])


def round_up(size, divisor):
    """int32 sizes rounded up to a multiple of divisor."""
    return (size + divisor - 1) // divisor * divisor
