"""Mask R-CNN's two mask resamplings: training targets cropped from gt masks into RoIs (FCNMaskHead's
`get_targets`), and predicted RoI masks pasted back into the image (`get_seg_masks` / torchvision's
`paste_masks_in_image`).

Both are bilinear resampling between two axis-aligned frames, which is separable: a [rows, mask_rows] weight
matrix from a 1-D coordinate function of y, the same for x, and `rows @ mask @ cols^T`. That is exact, static-shape,
differentiable and compiles under XLA (`tf.image.crop_and_resize` does not).

Boxes are [y1, x1, y2, x2] float32 in absolute pixels; each function's docstring names their frame.
"""
import tensorflow as tf


def _size(x, axis):
    """Static length of `x` along `axis` when known (keeps output shapes static), else the dynamic one."""
    return x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]


def _tent(u, size):
    """Bilinear weights [..., N, size] of sample coordinates u [..., N] over pixel indices 0..size-1.

    Pixel s weighs max(0, 1 - |u - s|): bilinear interpolation in which a neighbour outside [0, size) contributes
    nothing (grid_sample's zero padding). Clamp u first to replicate the edge instead.
    """
    return tf.nn.relu(1.0 - tf.abs(u[..., None] - tf.range(size, dtype=u.dtype)))


def _resample(images, row_weights, col_weights):
    """[B, N, h, w] images, [B, N, H, h] and [B, N, W, w] weights → [B, N, H, W] = rows @ image @ cols^T."""
    return tf.matmul(tf.matmul(row_weights, images), col_weights, transpose_b=True)


# ---------------------------------------------------------------------------------------------- mask targets

def _roi_grid_weights(r1, r2, f1, f2, mask_size, length, aligned=True, sampling_ratio=1):
    """Weights [B, R, mask_size, length] sampling a mask of `length` pixels that covers the frame [f1, f2] over the
    RoI [r1, r2] (all [B, R], one axis of the same pixel frame): each of the `mask_size` bins averages its samples.

    aligned: the samples sit at (p + (g + 0.5) / G) * bin past r1, in pixel-centre coordinates (aligned RoIAlign);
      false is roi_align(aligned=False), whose coordinates put pixel centres on integers: in this frame the samples
      move half a pixel on, and the RoI side is at least 1 px.
    sampling_ratio: G samples per bin; 0 is roi_align's adaptive ceil(RoI side / mask_size), per RoI.
    """
    extent = r2 - r1
    if not aligned:
        r1, extent = r1 + 0.5, tf.maximum(extent, 1.0)
    bin_size = extent / mask_size  # [B, R]
    if sampling_ratio > 0:
        grid = tf.fill(tf.shape(r1), float(sampling_ratio))
        most = sampling_ratio
    else:  # at least one sample, as roi_align divides by max(G, 1) and reads nothing for an empty RoI
        grid = tf.maximum(tf.math.ceil(extent / mask_size), 1.0)
        most = tf.cast(tf.reduce_max(tf.concat([tf.reshape(grid, [-1]), [1.0]], 0)), tf.int32)
    g = tf.range(most, dtype=tf.float32)  # [G]
    t = tf.range(mask_size, dtype=tf.float32)[:, None] + (g + 0.5) / grid[..., None, None]  # [B, R, M, G]
    y = r1[..., None, None] + t * bin_size[..., None, None]
    used = tf.cast(g < grid[..., None, None], tf.float32) / grid[..., None, None]  # averaging weights, [B, R, M, G]
    f1, f2 = f1[..., None, None], f2[..., None, None]
    length_f = tf.cast(length, tf.float32)
    # Mask pixel i covers [f1 + i * step, f1 + (i + 1) * step] and holds the value at its centre.
    u = (y - f1) * tf.math.divide_no_nan(length_f, f2 - f1) - 0.5
    if aligned:
        # The half pixel between the outermost centres and the frame border repeats the edge (RoIAlign clamps its
        # samples); beyond the frame the object is absent, and a degenerate (padding) frame holds nothing.
        inside = (y >= f1) & (y <= f2) & (f2 > f1)
    else:  # roi_align's bilinear rule: 0 more than one pixel outside the mask, the edge pixel up to there
        inside = (u >= -1.0) & (u <= length_f) & (f2 > f1)
    weights = _tent(tf.clip_by_value(u, 0.0, length_f - 1.0), length)  # [B, R, M, G, length]
    return tf.reduce_sum(weights * (used * tf.cast(inside, tf.float32))[..., None], axis=-2)


def mask_targets(gt_masks, gt_mask_boxes, rois, roi_gt_index, mask_size=28, binarize=True, threshold=0.5,
                 aligned=True, sampling_ratio=1):
    """FCNMaskHead's targets: each positive RoI's gt mask resampled onto a mask_size × mask_size grid over the RoI.

    By default target pixel (p, q) is the gt mask at the RoI's bin centre (y1 + (p + 0.5) * h / mask_size, likewise
    x), bilinearly interpolated between mask pixel centres, as aligned RoIAlign with one sample per bin does
    (MMDetection's adaptive sampling averages ceil(roi / mask_size) samples per bin: `sampling_ratio=0`).
    torchvision's `project_masks_on_boxes` is `aligned=False, sampling_ratio=0, binarize=False` on full-image masks.

    Args:
      gt_masks: [B, M, h, w] float / uint8 / bool instance masks (values in [0, 1]); mask m of image b covers the
        frame box gt_mask_boxes[b, m]: the gt box for masks cropped to it (the data pipeline crops to
        data.mask_crop_size), [0, 0, H, W] for full-image masks.
      gt_mask_boxes: [B, M, 4] frame boxes in the padded network input's pixels. Zero-size boxes (padding) give
        empty masks.
      rois: [B, R, 4] positive RoIs in the same pixels.
      roi_gt_index: int [B, R], the gt each RoI is assigned to, in [0, M) (values outside are clipped; a padded RoI
        may take any value and then gets that gt's target).
      mask_size: side of the targets (28).
      binarize: threshold the targets (`>= threshold` → 1.0), as MMDetection does; else keep them soft, as
        torchvision does.
      aligned, sampling_ratio: where each bin samples the mask and how many times (`_roi_grid_weights`).
    Returns:
      [B, R, mask_size, mask_size] float32 targets in the RoI's frame. Outside its frame box a mask is 0; within
      half a mask pixel inside the border it repeats its edge pixel (aligned). No gradient flows back.
    """
    gt_masks = tf.cast(gt_masks, tf.float32)
    index = tf.clip_by_value(tf.cast(roi_gt_index, tf.int32), 0, tf.shape(gt_masks)[1] - 1)
    masks = tf.gather(gt_masks, index, batch_dims=1)  # [B, R, h, w]
    frames = tf.gather(tf.cast(gt_mask_boxes, tf.float32), index, batch_dims=1)  # [B, R, 4]
    fy1, fx1, fy2, fx2 = tf.unstack(frames, 4, axis=-1)
    ry1, rx1, ry2, rx2 = tf.unstack(tf.cast(rois, tf.float32), 4, axis=-1)
    rows = _roi_grid_weights(ry1, ry2, fy1, fy2, mask_size, _size(gt_masks, 2), aligned, sampling_ratio)
    cols = _roi_grid_weights(rx1, rx2, fx1, fx2, mask_size, _size(gt_masks, 3), aligned, sampling_ratio)
    targets = tf.stop_gradient(_resample(masks, rows, cols))
    if binarize:
        targets = tf.cast(targets >= threshold, tf.float32)
    return targets


# ---------------------------------------------------------------------------------------------- paste masks

def _mmdet_weights(b1, b2, mask_len, image_len):
    """MMDetection's `_do_paste_mask` along one axis: [B, K, image_len, mask_len] weights for boxes [b1, b2] ([B, K]).

    grid_sample (align_corners=False, zero padding) reads image pixel centre Y + 0.5 at mask coordinate
    u = (Y + 0.5 - b1) / (b2 - b1) * S - 0.5; it fades to 0 over the half mask pixel past the box border.
    """
    centres = tf.range(image_len, dtype=tf.float32) + 0.5
    extent = (b2 - b1)[..., None]
    u = (centres - b1[..., None]) * tf.math.divide_no_nan(tf.cast(mask_len, tf.float32), extent) - 0.5
    # MMDetection smears the mask's middle row over the whole image for a zero-size box; nothing is saner.
    return _tent(u, mask_len) * tf.cast(extent > 0, tf.float32)[..., None]


def _torchvision_weights(b1, b2, mask_len, image_len):
    """torchvision's `paste_masks_in_image` along one axis: [B, K, image_len, mask_len] weights, boxes [B, K].

    The mask gets a border of one zero pixel (S + 2), the box grows about its centre by (S + 2) / S and is truncated
    to integers [p1, p2]; the padded mask is resized to n = p2 - p1 + 1 pixels (F.interpolate bilinear,
    align_corners=False) and copied to image pixels p1..p2.
    """
    padded = mask_len + 2
    if isinstance(mask_len, int):
        scale = tf.constant(padded / mask_len, tf.float32)  # torch rounds the Python float to float32
    else:
        scale = tf.cast(padded, tf.float32) / tf.cast(mask_len, tf.float32)
    half = (b2 - b1) * 0.5 * scale
    centre = (b2 + b1) * 0.5
    # `.to(torch.int64)` truncates toward zero (not floor) for boxes reaching past the top-left corner.
    p1 = tf.cast(tf.cast(centre - half, tf.int32), tf.float32)[..., None]
    p2 = tf.cast(tf.cast(centre + half, tf.int32), tf.float32)[..., None]
    n = tf.maximum(p2 - p1 + 1.0, 1.0)
    pixels = tf.range(image_len, dtype=tf.float32)
    src = (tf.cast(padded, tf.float32) / n) * (pixels - p1 + 0.5) - 0.5
    # PyTorch clamps the source index to [0, S + 1]; the zero border's weight is then simply dropped (u = src - 1).
    u = tf.clip_by_value(src, 0.0, tf.cast(padded - 1, tf.float32)) - 1.0
    inside = (pixels >= p1) & (pixels <= p2)
    return _tent(u, mask_len) * tf.cast(inside, tf.float32)[..., None]


_PASTE_WEIGHTS = {"mmdet": _mmdet_weights, "torchvision": _torchvision_weights}
PASTE_MODES = tuple(_PASTE_WEIGHTS)


def paste_masks(masks, boxes, image_size, mode="mmdet", threshold=None, strict=None):
    """Pastes each detection's mask, predicted in its box's frame, into a full image.

    Args:
      masks: [B, K, S, S] mask probabilities (S = 28), each over its box.
      boxes: [B, K, 4] detected boxes in the pixels of the target image (the original image).
      image_size: (H, W) of the target image: Python ints for static output shapes, or int scalar tensors.
      mode: "mmdet" samples the mask at every image pixel centre, bilinear with zero padding (MMDetection's
        grid_sample paste; a box of zero height or width pastes nothing). "torchvision" reproduces
        `torchvision.models.detection.roi_heads.paste_masks_in_image` exactly (1-pixel zero border, box expanded
        by (S + 2) / S and truncated to integers); a box lying wholly outside the image pastes nothing (torchvision
        would fail on some).
      threshold: None for soft masks, else a binarization threshold.
      strict: with a threshold, compare `>` (torchvision's COCO evaluation uses `> 0.5`) instead of `>=`
        (MMDetection's `masks >= mask_thr_binary`); None: each mode's own rule (strict for "torchvision").
    Returns:
      [B, K, H, W]: float32 soft masks, or uint8 0/1 when `threshold` is given.
    """
    if mode not in _PASTE_WEIGHTS:
        raise ValueError(f"paste_masks: mode must be one of {sorted(_PASTE_WEIGHTS)}, got {mode!r}")
    weights = _PASTE_WEIGHTS[mode]
    masks = tf.cast(masks, tf.float32)
    y1, x1, y2, x2 = tf.unstack(tf.cast(boxes, tf.float32), 4, axis=-1)
    height, width = image_size
    rows = weights(y1, y2, _size(masks, 2), height)
    cols = weights(x1, x2, _size(masks, 3), width)
    pasted = _resample(masks, rows, cols)
    if threshold is None:
        return pasted
    if strict is None:
        strict = mode == "torchvision"
    keep = pasted > threshold if strict else pasted >= threshold
    return tf.cast(keep, tf.uint8)
