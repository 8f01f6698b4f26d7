"""RoIAlign and RoIPool over one feature map or an FPN pyramid (MMDetection's SingleRoIExtractor).

Features are NHWC. Boxes are float32 [B, N, 4] as [y1, x1, y2, x2] in pixels of the padded network
input; the level with stride s sees them multiplied by 1/s (its "spatial scale"). RoIAlign follows
torchvision's CPU kernel (`torchvision.ops.roi_align`) sample for sample; RoIPool follows
`torchvision.ops.roi_pool` exactly.

The multilevel ops stack the pyramid levels into one canvas so that every RoI, whatever its level, is
pooled by a single `crop_and_resize` (or `gather_nd`) call instead of one call per level.
"""
import numbers

import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from tfrcnn.ops import boxes as box_ops


def map_roi_levels(boxes, num_levels, finest_scale=56):
    """MMDetection's `SingleRoIExtractor.map_roi_levels`: the pyramid level each RoI is pooled from.

    level = floor(log2(sqrt(area) / finest_scale + 1e-6)), clamped to [0, num_levels - 1], so with
    finest_scale 56: scale < 112 → 0 (P2), [112, 224) → 1, [224, 448) → 2, >= 448 → 3. torchvision's
    `floor(4 + log2(sqrt(area) / 224) + 1e-6)` clamped to [2, 5] gives the same buckets (its epsilon sits
    outside the log, which moves each threshold by under 1e-6 relative).

    Args:
      boxes: [B, N, 4] boxes [y1, x1, y2, x2] in input-image pixels. Empty or inverted boxes go to level 0.
      num_levels: number of pyramid levels (4 for P2..P5).
      finest_scale: level 0 takes boxes with sqrt(area) < 2 * finest_scale (pixels).
    Returns:
      int32 [B, N] level indices in [0, num_levels - 1].
    """
    ratio = tf.sqrt(box_ops.area(boxes)) / finest_scale + 1e-6
    # floor(log2(r)) >= k  <=>  r >= 2**k: counting thresholds is exact where a float32 log2 could round
    # a ratio just above a power of two down to the level below.
    level = tf.zeros_like(ratio, dtype=tf.int32)
    for k in range(1, num_levels):
        level += tf.cast(ratio >= 2.0**k, tf.int32)
    return level


def roi_align(features, boxes, output_size, sampling_ratio=2, aligned=True, spatial_scale=1.0):
    """RoIAlign on one feature map (`torchvision.ops.roi_align` with a fixed `sampling_ratio`).

    Args:
      features: [B, H, W, C] feature map.
      boxes: [B, N, 4] boxes [y1, x1, y2, x2] in input pixels; `boxes * spatial_scale` are feature pixels.
      output_size: S or (S_h, S_w), bins per RoI.
      sampling_ratio: int >= 1, samples per bin along each axis.
      aligned: shift the box by -0.5 feature pixel (pixel centres at integer + 0.5; Detectron2/MMDetection).
        False is torchvision's legacy mode, which also forces RoI sides to at least 1 feature pixel.
      spatial_scale: feature pixels per input pixel (1 / stride).
    Returns:
      [B, N, S_h, S_w, C] in the dtype of `features`. No gradient flows to `boxes`.
    """
    levels = tf.zeros_like(boxes[..., 0], tf.int32)
    return _align([features], boxes, levels, [spatial_scale], output_size, sampling_ratio, aligned)


def stack_pyramid(features):
    """The canvas `multilevel_roi_align` samples (the levels stacked, each edge-padded by one pixel): stacking
    copies every map, so callers that pool the same maps twice (box and mask RoIs) stack them once and pass it.

    Args:
      features: list of [B, H_l, W_l, C] maps, finest first.
    Returns:
      an opaque tuple for `multilevel_roi_align(..., pyramid=)`.
    """
    return _stack_levels(list(features), pad=1)


def multilevel_roi_align(features, boxes, output_size, sampling_ratio=2, aligned=True,
                         strides=(4, 8, 16, 32), finest_scale=56, pyramid=None, image_indices=None):
    """RoIAlign over an FPN pyramid: each RoI is pooled from the level `map_roi_levels` gives it.

    MMDetection's `SingleRoIExtractor` + `RoIAlign`, and (with aligned=False) torchvision's
    `MultiScaleRoIAlign`. Cost: one `crop_and_resize` of B*N crops of (S_h*sr) x (S_w*sr) samples,
    i.e. B*N*S_h*S_w*sr^2*C floats before the sr x sr average.

    Args:
      features: list of [B, H_l, W_l, C] maps, finest first (P2..P5).
      boxes: [B, N, 4] boxes [y1, x1, y2, x2] in input-image (padded network input) pixels.
      output_size: S or (S_h, S_w).
      sampling_ratio: int >= 1 (see `roi_align`).
      aligned: see `roi_align`. MMDetection: True; torchvision: False.
      strides: input pixels per feature pixel of each level, one per map in `features`.
      finest_scale: see `map_roi_levels`.
      pyramid: `stack_pyramid(features)`, when the caller already has it.
      image_indices: optional int32 [N]: then `boxes` is a flat [N, 4] list of the RoIs of the whole batch and
        image_indices[n] is the image box n lies in (RoIs of a varying count per image, without padding slots).
    Returns:
      [B, N, S_h, S_w, C] (or [N, S_h, S_w, C] with image_indices) in the dtype of the features.
    """
    _check_levels(features, strides)
    if image_indices is not None:
        boxes = boxes[None]
    levels = map_roi_levels(boxes, len(features), finest_scale)
    pooled = _align(list(features), boxes, levels, [1.0 / s for s in strides], output_size, sampling_ratio,
                    aligned, pyramid, image_indices)
    return pooled if image_indices is None else pooled[0]


def roi_pool(features, boxes, output_size, spatial_scale=1.0):
    """RoIPool on one feature map (`torchvision.ops.roi_pool`, Fast R-CNN's quantized max pooling).

    The box is rounded to feature pixels (half away from zero), split into S bins with integer bounds
    [floor(p * bin), ceil((p + 1) * bin)) clipped to the map; each bin is the max of its pixels, 0 if empty.

    Memory: the RoIs' pixels are gathered as one [B, N, S_h*K_h, S_w*K_w, C] tensor, where K is the largest
    bin extent (pixels) in the batch, about (RoI side in feature pixels) / S + 2. The K dimension is
    data dependent, so this op has a dynamic intermediate shape (its output shape is static). Example:
    512 RoIs, 7x7 bins, C=256, K=6 → 512*42*42*256 floats = 0.9 GB.

    Args:
      features: [B, H, W, C].
      boxes: [B, N, 4] boxes [y1, x1, y2, x2] in input pixels; `boxes * spatial_scale` are feature pixels.
      output_size: S or (S_h, S_w).
      spatial_scale: feature pixels per input pixel.
    Returns:
      [B, N, S_h, S_w, C] in the dtype of `features`.
    """
    levels = tf.zeros_like(boxes[..., 0], tf.int32)
    return _pool([features], boxes, levels, [spatial_scale], output_size)


def multilevel_roi_pool(features, boxes, output_size, strides=(4, 8, 16, 32), finest_scale=56):
    """RoIPool over an FPN pyramid, each RoI on the level `map_roi_levels` gives it (see `roi_pool`).

    Args:
      features: list of [B, H_l, W_l, C] maps, finest first.
      boxes: [B, N, 4] boxes [y1, x1, y2, x2] in input-image pixels.
      output_size: S or (S_h, S_w).
      strides, finest_scale: as in `multilevel_roi_align`.
    Returns:
      [B, N, S_h, S_w, C] in the dtype of the features.
    """
    _check_levels(features, strides)
    levels = map_roi_levels(boxes, len(features), finest_scale)
    return _pool(list(features), boxes, levels, [1.0 / s for s in strides], output_size)


# ----------------------------------------------------------------------------------------------------


def _align(features, boxes, levels, scales, output_size, sampling_ratio, aligned, pyramid=None, image_indices=None):
    """RoIAlign of each box on features[levels[b, n]] at scales[levels[b, n]] → [B, N, S_h, S_w, C]; with
    image_indices [N], boxes is [1, N, 4] and box n samples image image_indices[n]."""
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, numbers.Integral) or sampling_ratio < 1:
        raise ValueError(
            f"roi_align: sampling_ratio must be an int >= 1, got {sampling_ratio!r}; adaptive sampling "
            "(0 or -1) needs a per-RoI sample count, which static shapes cannot have")
    sr = int(sampling_ratio)
    out_h, out_w = _pair(output_size)
    # One replicated pixel around each level turns torchvision's edge rules into plain bilinear
    # interpolation: a sample in [-1, 0] reads row 0 and one in [H-1, H] reads row H-1, as its kernel does.
    canvas, row_offsets, heights, widths = pyramid if pyramid is not None else _stack_levels(features, pad=1)
    boxes = tf.stop_gradient(tf.cast(boxes, tf.float32))  # torchvision and MMDetection: no gradient to RoIs

    def per_box(values):  # [L] per-level values → [B, N]
        return tf.gather(values, levels)

    scale = per_box(tf.constant(scales, tf.float32))
    offset = 0.5 if aligned else 0.0
    y1, x1, y2, x2 = tf.unstack(boxes * scale[..., None] - offset, 4, axis=-1)  # feature pixels
    h, w = y2 - y1, x2 - x1
    if not aligned:
        h, w = tf.maximum(h, 1.0), tf.maximum(w, 1.0)
    ys = _sample_positions(y1, h, out_h, sr)  # [B, N, S_h * sr]
    xs = _sample_positions(x1, w, out_w, sr)  # [B, N, S_w * sr]
    # torchvision drops (zeroes, but still counts) samples beyond one pixel outside the map. Computing that
    # here, rather than trusting the canvas, is what lets levels touch inside the canvas.
    valid_y = (ys >= -1.0) & (ys <= tf.cast(per_box(heights), tf.float32)[..., None])
    valid_x = (xs >= -1.0) & (xs <= tf.cast(per_box(widths), tf.float32)[..., None])
    ys = ys + 1.0 + tf.cast(per_box(row_offsets), tf.float32)[..., None]  # canvas pixels
    xs = xs + 1.0
    # crop_and_resize puts sample i at y1n * (Hc - 1) + i * (y2n - y1n) * (Hc - 1) / (n - 1), so a box from the
    # first to the last sample point reproduces the evenly spaced grid (and n = 1 samples its centre).
    # Multiplying by reciprocals (here and in _sample_positions) rather than dividing keeps tf.function
    # equal to eager: grappler rewrites a division by a constant that way, which rounds differently.
    inv_h = 1.0 / tf.cast(tf.shape(canvas)[1] - 1, tf.float32)
    inv_w = 1.0 / tf.cast(tf.shape(canvas)[2] - 1, tf.float32)
    crop_boxes = tf.stack([ys[..., 0] * inv_h, xs[..., 0] * inv_w, ys[..., -1] * inv_h, xs[..., -1] * inv_w],
                          axis=-1)
    batch, num = _dim(boxes, 0), _dim(boxes, 1)
    channels = _dim(canvas, 3)
    box_indices = _box_indices(batch, num) if image_indices is None else tf.cast(image_indices, tf.int32)
    crops = crop_and_resize(canvas, tf.reshape(crop_boxes, [-1, 4]), box_indices, (out_h * sr, out_w * sr))
    valid = valid_y[..., :, None] & valid_x[..., None, :]  # [B, N, S_h*sr, S_w*sr]
    mask = tf.reshape(tf.cast(valid, crops.dtype), [-1, out_h * sr, out_w * sr, 1])
    # Boxes inside the image (proposals, detections: clipped) never sample beyond a map: skip that full pass then.
    crops = tf.cond(tf.reduce_all(valid), lambda: crops, lambda: crops * mask)
    # The mean of each bin's sr x sr samples: avg_pool is 7x faster on CPU than a reduce_mean over two
    # interleaved axes of [B, N, S_h, sr, S_w, sr, C].
    pooled = tf.nn.avg_pool2d(crops, sr, sr, "VALID") if sr > 1 else crops
    pooled = tf.reshape(pooled, [batch, num, out_h, out_w, channels])
    return tf.cast(pooled, features[0].dtype)


def _sample_positions(start, size, bins, sr):
    """1-D RoIAlign sample points: start [B, N] + (k + 0.5) * size / (bins * sr), k < bins*sr → [B, N, bins*sr].

    Sample iy of bin p sits at start + p * bin + (iy + 0.5) * bin / sr, i.e. k = p * sr + iy.
    """
    k = tf.range(bins * sr, dtype=tf.float32) + 0.5
    return start[..., None] + k * (size * (1.0 / (bins * sr)))[..., None]


def _pool(features, boxes, levels, scales, output_size):
    """RoIPool of each box on features[levels[b, n]] at scales[levels[b, n]] → [B, N, S_h, S_w, C]."""
    out_h, out_w = _pair(output_size)
    canvas, row_offsets, heights, widths = _stack_levels(features, pad=0)
    boxes = tf.cast(boxes, tf.float32)

    def per_box(values):  # [L] per-level values → [B, N]
        return tf.gather(values, levels)

    scale = per_box(tf.constant(scales, tf.float32))
    y1, x1, y2, x2 = tf.unstack(boxes * scale[..., None], 4, axis=-1)
    rows, row_valid, row_empty = _pool_bins(y1, y2, out_h, per_box(heights))  # [B, N, S_h, K_h]
    cols, col_valid, col_empty = _pool_bins(x1, x2, out_w, per_box(widths))  # [B, N, S_w, K_w]
    rows += per_box(row_offsets)[..., None, None]
    batch, num = _dim(boxes, 0), _dim(boxes, 1)
    rows = tf.reshape(rows, [batch, num, -1])  # [B, N, S_h*K_h]
    cols = tf.reshape(cols, [batch, num, -1])  # [B, N, S_w*K_w]
    index = tf.stack([rows[:, :, :, None] + tf.zeros_like(cols)[:, :, None, :],
                      cols[:, :, None, :] + tf.zeros_like(rows)[:, :, :, None]], axis=-1)
    values = tf.gather_nd(canvas, index, batch_dims=1)  # [B, N, S_h*K_h, S_w*K_w, C]
    channels = _dim(canvas, 3)
    k_h, k_w = tf.shape(row_valid)[-1], tf.shape(col_valid)[-1]
    values = tf.reshape(values, tf.stack([batch, num, out_h, k_h, out_w, k_w, channels]))
    lowest = tf.constant(float("-inf"), values.dtype)
    # Separable max: cells of the gathered grid that lie past a bin's end are masked before each reduction.
    values = tf.where(col_valid[:, :, None, None, :, :, None], values, lowest)
    values = tf.reduce_max(values, axis=5)  # [B, N, S_h, K_h, S_w, C]
    values = tf.where(row_valid[:, :, :, :, None, None], values, lowest)
    values = tf.reduce_max(values, axis=3)  # [B, N, S_h, S_w, C]
    empty = row_empty[:, :, :, None, None] | col_empty[:, :, None, :, None]
    values = tf.where(empty, tf.zeros_like(values), values)
    return tf.ensure_shape(values, [_static(batch), _static(num), out_h, out_w, _static(channels)])


def _pool_bins(lo, hi, bins, size):
    """torchvision's RoIPool bin bounds along one axis.

    Args:
      lo, hi: [B, N] box edges in feature pixels (float). size: [B, N] int32 map extent.
    Returns:
      index: int32 [B, N, bins, K] pixel k of bin p (start + k, clipped into the map);
      valid: bool [B, N, bins, K] whether start + k < end; empty: bool [B, N, bins] end <= start.
    """
    start, end = _round_half_away(lo), _round_half_away(hi)
    length = tf.maximum(end - start + 1, 1)  # malformed RoIs become 1 pixel, as in torchvision
    # The kernel's float32 quotient. In a tf.function grappler turns division by a constant into
    # multiplication by its reciprocal, which is not always the same float and moves bin bounds by a pixel;
    # a float64 quotient rounded to float32 is the exact float32 quotient either way.
    bin_size = tf.cast(tf.cast(length, tf.float64)[..., None] / bins, tf.float32)
    p = tf.range(bins, dtype=tf.float32)
    size = size[..., None]
    bin_start = tf.clip_by_value(tf.cast(tf.floor(p * bin_size), tf.int32) + start[..., None], 0, size)
    bin_end = tf.clip_by_value(tf.cast(tf.math.ceil((p + 1.0) * bin_size), tf.int32) + start[..., None], 0, size)
    extent = tf.maximum(bin_end - bin_start, 0)
    k = tf.range(tf.reduce_max(tf.concat([tf.reshape(extent, [-1]), [0]], 0)))
    index = bin_start[..., None] + k
    valid = index < bin_end[..., None]
    index = tf.clip_by_value(index, 0, tf.maximum(size[..., None] - 1, 0))
    return index, valid, extent == 0


def crop_and_resize(image, boxes, box_indices, crop_size):
    """`tf.image.crop_and_resize` (bilinear, extrapolation value 0) with a gradient to `image` that loses nothing.

    TensorFlow's CPU kernel for that gradient (CropAndResizeGradImage) adds into the image from several threads
    without synchronisation, so overlapping crops lose updates (tensorflow#42033), unless op determinism is on
    (`tf.config.experimental.enable_op_determinism()`, which `runtime.deterministic` sets): then it runs on one
    thread. So the gradient is that kernel when op determinism is on and no GPU is visible, else a segment sum of
    each sample's four bilinear weights (`tf.math.unsorted_segment_sum`, exact with any threading). The kernel is
    the cheaper: 3.9 against 17.4 ms for the main job's 256 box RoIs (14 x 14 samples, 64 channels) on a 2-core
    AMD EPYC. The two agree to float32 rounding (the order of the additions). No gradient flows to `boxes`
    (RoIAlign's boxes carry none).

    Args:
      image: [B, H, W, C] float. boxes: float32 [K, 4] normalized (y1, x1, y2, x2) as crop_and_resize's.
      box_indices: int32 [K], the image of each box. crop_size: (h, w) Python ints.
    Returns:
      [K, h, w, C] float32 crops.
    """
    boxes = tf.stop_gradient(boxes)

    @tf.custom_gradient
    def crop(image):
        def grad(upstream):
            if _kernel_gradient_is_exact():
                # summed in float32 and cast back, as the segment sum does (a float16 canvas under mixed_float16)
                return tf.cast(tf.raw_ops.CropAndResizeGradImage(
                    grads=tf.cast(upstream, tf.float32), boxes=boxes, box_ind=box_indices,
                    image_size=tf.shape(image), T=tf.float32), image.dtype)
            return _crop_and_resize_image_grad(upstream, tf.shape(image), image.dtype, boxes, box_indices)

        return tf.image.crop_and_resize(image, boxes, box_indices, crop_size), grad

    return crop(image)


def _kernel_gradient_is_exact():
    """Whether TensorFlow's CropAndResizeGradImage loses no updates here (read when the gradient is traced): op
    determinism runs its CPU kernel on one thread, and its GPU kernel, which has no deterministic version, raises
    under it instead, so a process that sees a GPU keeps the segment-sum gradient."""
    return tf_config.is_op_determinism_enabled() and not tf.config.list_logical_devices("GPU")


def _crop_and_resize_image_grad(upstream, image_shape, dtype, boxes, box_indices):
    """d crops / d image of crop_and_resize, upstream [K, h, w, C] → [B, H, W, C]: every in-image sample sends
    upstream * bilinear weight to its four neighbouring pixels, with the kernel's own sample coordinates."""
    crop_h, crop_w = upstream.shape[1], upstream.shape[2]
    height, width = image_shape[1], image_shape[2]

    def axis(lo, hi, size, n):  # sample coordinates along one axis, as the kernel computes them
        last = tf.cast(size - 1, tf.float32)
        if n > 1:
            step = (hi - lo) * last / float(n - 1)
            pos = lo[:, None] * last + tf.range(n, dtype=tf.float32)[None] * step[:, None]
        else:
            pos = (0.5 * (lo + hi) * last)[:, None]
        inside = (pos >= 0.0) & (pos <= last)
        low = tf.floor(pos)
        frac = tf.where(inside, pos - low, 0.0)
        low = tf.clip_by_value(tf.cast(low, tf.int32), 0, size - 1)
        high = tf.clip_by_value(tf.cast(tf.math.ceil(pos), tf.int32), 0, size - 1)
        return low, high, frac, tf.cast(inside, tf.float32)

    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=1)
    top, bottom, fy, in_y = axis(y1, y2, height, crop_h)      # [K, h]
    left, right, fx, in_x = axis(x1, x2, width, crop_w)       # [K, w]
    upstream = tf.cast(upstream, tf.float32)
    base = tf.cast(box_indices, tf.int32)[:, None, None] * (height * width)
    total = image_shape[0] * height * width
    grad = 0.0
    # Samples outside the image (zero weights) send nothing: the 0/1 masks go into the per-axis weights, not
    # over the full-size upstream.
    for row, wy in ((top, (1.0 - fy) * in_y), (bottom, fy * in_y)):
        for col, wx in ((left, (1.0 - fx) * in_x), (right, fx * in_x)):
            index = base + row[:, :, None] * width + col[:, None, :]  # [K, h, w] flat pixel
            weight = (wy[:, :, None] * wx[:, None, :])[..., None]
            grad += tf.math.unsorted_segment_sum(upstream * weight, index, total)
    return tf.cast(tf.reshape(grad, image_shape), dtype)


def _round_half_away(x):
    """C's round() on float32 [..] → int32: ties away from zero (tf.round rounds ties to even)."""
    whole = tf.sign(x) * tf.floor(tf.abs(x))
    ties_up = tf.abs(x - whole) >= 0.5  # x - whole is exact in float32
    return tf.cast(whole + tf.sign(x) * tf.cast(ties_up, x.dtype), tf.int32)


def _stack_levels(features, pad):
    """Stacks maps vertically into one canvas, each padded by `pad` replicated pixels on every side.

    Args:
      features: list of L maps [B, H_l, W_l, C].
    Returns:
      canvas [B, sum(H_l + 2 pad), max(W_l) + 2 pad, C] (narrower levels zero-filled on the right), in the maps'
        dtype, float32 for bfloat16 maps;
      int32 [L] each: the canvas row of each level's first (padded) row, H_l, W_l.
    """
    heights = [_dim(f, 1) for f in features]
    widths = [_dim(f, 2) for f in features]
    max_w = widths[0]
    for w in widths[1:]:
        max_w = tf.maximum(max_w, w) if _is_tensor(max_w, w) else max(max_w, w)
    padded = []
    for f, w in zip(features, widths):
        if pad:
            f = tf.pad(f, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="SYMMETRIC")  # edge replicate
        padded.append(tf.pad(f, [[0, 0], [0, 0], [0, max_w - w], [0, 0]]))
    canvas = padded[0] if len(padded) == 1 else tf.concat(padded, axis=1)
    if canvas.dtype == tf.bfloat16:  # crop_and_resize has no bfloat16 kernel: one cast of the stacked canvas
        canvas = tf.cast(canvas, tf.float32)
    heights = tf.cast(tf.stack(heights), tf.int32)
    widths = tf.cast(tf.stack(widths), tf.int32)
    row_offsets = tf.cumsum(heights + 2 * pad, exclusive=True)
    return canvas, row_offsets, heights, widths


def _box_indices(batch, num):
    """Image index of each box after flattening [B, N] → [B*N]."""
    return tf.repeat(tf.range(batch, dtype=tf.int32), num)


def _check_levels(features, strides):
    if len(features) != len(strides):
        raise ValueError(f"got {len(features)} feature maps but {len(strides)} strides")


def _pair(size):
    if isinstance(size, numbers.Integral):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def _dim(x, axis):
    """Static size of x's axis when known, else the dynamic one."""
    static = x.shape[axis]
    return static if static is not None else tf.shape(x)[axis]


def _static(size):
    return None if isinstance(size, tf.Tensor) else size


def _is_tensor(*values):
    return any(isinstance(v, tf.Tensor) for v in values)
