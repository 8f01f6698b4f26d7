"""Draws detections on an image with PIL: a colour per category, translucent masks, boxes and "name score" labels.

Host-side numpy/PIL only (no TensorFlow): it takes what `tfrcnn.export.DetectionModule` returns for one image,
boxes [y1, x1, y2, x2] in ORIGINAL image pixels and masks already pasted into the image; or COCO records (results
or ground-truth annotations, `draw_records`).
"""
import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MASK_ALPHA = 0.45
_GOLDEN = 0.618033988749895


def category_color(category_id):
    """A fixed RGB colour for a category id: hues stepped by the golden ratio stay far apart for nearby ids, and
    the colour depends on the id alone, so a category looks the same in every image and every run."""
    hue = (int(category_id) * _GOLDEN) % 1.0
    value = 0.95 if int(category_id) % 2 else 0.75  # alternate brightness: neighbours differ twice over
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.8, value))


def _text_color(rgb):
    """Black on light backgrounds, white on dark ones (ITU-R BT.601 luma)."""
    return (0, 0, 0) if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140 else (255, 255, 255)


def _outline(mask):
    """bool [H, W] → the mask's own border pixels (in the mask, with a 4-neighbour outside it or off the image)."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _blend_masks(canvas, masks, colors):
    """Paints each bool [H, W] mask translucently, then its outline opaquely, in order (later ones on top)."""
    out = canvas.astype(np.float32)
    for mask, color in zip(masks, colors):
        color = np.asarray(color, np.float32)
        out[mask] = (1.0 - MASK_ALPHA) * out[mask] + MASK_ALPHA * color
        out[_outline(mask)] = color
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def draw_detections(image, boxes, classes, scores, class_names=None, masks=None, score_threshold=0.5):
    """Draws the detections scoring at least `score_threshold` on a copy of `image`.

    Args:
      image: uint8 [H, W, 3] RGB.
      boxes: [K, 4] [y1, x1, y2, x2] in original-image pixels (the frame of `image`).
      classes: int [K] dataset category ids (rows with id 0, padding, are skipped).
      scores: [K] confidences, or None for ground truth: every box drawn, labelled with its name alone.
      class_names: {category id: name}; an id it lacks is labelled with the id itself.
      masks: None or [K, H, W] masks in the image (0/1, bool, or probabilities thresholded at 0.5).
      score_threshold: detections below it are not drawn.
    Returns:
      uint8 [H, W, 3]: masks first (lowest score first, so the best is on top), then every box, then every label
      (labels last so that no box crosses a label).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"draw_detections: image must be [H, W, 3], got shape {image.shape}")
    height, width = image.shape[:2]
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    classes = np.asarray(classes).astype(np.int64).reshape(-1)
    labelled = scores is not None
    scores = np.asarray(scores, np.float64).reshape(-1) if labelled else np.ones(len(boxes))
    if not len(boxes) == len(classes) == len(scores):
        raise ValueError(f"draw_detections: {len(boxes)} boxes, {len(classes)} classes and {len(scores)} scores")
    class_names = class_names or {}
    keep = np.flatnonzero((scores >= score_threshold) & (classes > 0))
    keep = keep[np.argsort(scores[keep], kind="stable")]  # ascending: the best detection is drawn last
    colors = [category_color(c) for c in classes[keep]]

    canvas = image.astype(np.uint8)
    if masks is not None and len(keep):
        masks = np.asarray(masks)
        if masks.shape != (len(boxes), height, width):
            raise ValueError(f"draw_detections: masks must be [{len(boxes)}, {height}, {width}], got {masks.shape}")
        binary = masks[keep] >= 0.5 if masks.dtype.kind == "f" else masks[keep] != 0
        canvas = _blend_masks(canvas, binary, colors)

    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    thickness = max(1, round(min(height, width) / 250))
    font = ImageFont.load_default(size=max(10, min(18, round(min(height, width) / 40))))
    corners = []
    for k, color in zip(keep, colors):
        y1, x1, y2, x2 = boxes[k]
        # PIL's rectangle includes its far corner; boxes end at x2 exclusive, hence the -1.
        left, top = min(max(x1, 0), width - 1), min(max(y1, 0), height - 1)
        right, bottom = min(max(x2 - 1, left), width - 1), min(max(y2 - 1, top), height - 1)
        draw.rectangle([left, top, right, bottom], outline=color, width=thickness)
        corners.append((left, top))
    for k, color, (left, top) in zip(keep, colors, corners):
        text = class_names.get(int(classes[k]), str(int(classes[k]))) + (f" {scores[k]:.2f}" if labelled else "")
        tx1, ty1, tx2, ty2 = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = tx2 - tx1 + 4, ty2 - ty1 + 4
        # Above the box; inside it, at its top, when there is no room above; shifted left to stay in the image.
        y = top - text_h if top - text_h >= 0 else top
        x = max(0, min(left, width - text_w))
        draw.rectangle([x, y, x + text_w - 1, y + text_h - 1], fill=color)
        draw.text((x + 2 - tx1, y + 2 - ty1), text, fill=_text_color(color), font=font)
    return np.asarray(picture, np.uint8)


CROWD_COLOR = (160, 160, 160)


def draw_ground_truth(image, boxes, classes, class_names=None, masks=None, crowd_boxes=(), valid_size=None):
    """Ground truth as `draw_detections` draws detections (no scores), crowd regions as grey boxes labelled
    "crowd", and the padding outside `valid_size` darkened.

    Args:
      image: uint8 [H, W, 3]; boxes [K, 4] [y1, x1, y2, x2] and crowd_boxes [C, 4] in its pixels; classes int [K]
        category ids; masks None or [K, H, W] 0/1 in the image.
      valid_size: (h, w) of the image within a padded canvas (the rest is padding); None: all of it is image.
    """
    canvas = np.array(image, np.uint8)
    if valid_size is not None:
        h, w = (int(v) for v in valid_size)
        canvas[h:] //= 3
        canvas[:h, w:] //= 3
    canvas = draw_detections(canvas, boxes, classes, None, class_names, masks=masks)
    crowd_boxes = np.asarray(crowd_boxes, np.float64).reshape(-1, 4)
    if not len(crowd_boxes):
        return canvas
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for y1, x1, y2, x2 in crowd_boxes:
        draw.rectangle([x1, y1, max(x2 - 1, x1), max(y2 - 1, y1)], outline=CROWD_COLOR, width=1)
        draw.text((x1 + 2, y1 + 1), "crowd", fill=CROWD_COLOR)
    return np.asarray(picture, np.uint8)


def draw_records(image, records, class_names=None, score_threshold=0.5):
    """Draws one image's COCO records: results (with a "score": `draw_detections`) or ground-truth annotations
    (without: `draw_ground_truth`, crowd ones grey). Boxes are COCO's [x, y, w, h] in the image's pixels (a
    record without "bbox" takes its mask's); a "segmentation" (polygons or RLE) is drawn when every record has one.
    """
    height, width = np.asarray(image).shape[:2]
    scored = bool(records) and all("score" in r for r in records)
    if scored:  # only the masks that are drawn decode: an image may hold a hundred full-size ones
        records = [r for r in records if r["score"] >= score_threshold]
    masks = None
    if records and all("segmentation" in r for r in records):
        masks = np.stack([_mask(r, height, width) for r in records])
    boxes = []
    for k, r in enumerate(records):
        if "bbox" in r:
            x, y, w, h = r["bbox"]
        else:  # a segm result: its mask's extent
            rows, cols = np.flatnonzero(masks[k].any(1)), np.flatnonzero(masks[k].any(0))
            y, x, h, w = (rows[0], cols[0], rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]) if rows.size else (0,) * 4
        boxes.append([y, x, y + h, x + w])
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    classes = np.array([r["category_id"] for r in records], np.int64)
    if scored:
        return draw_detections(image, boxes, classes, [r["score"] for r in records], class_names, masks,
                               score_threshold)
    crowd = np.array([bool(r.get("iscrowd", 0)) for r in records], bool)
    return draw_ground_truth(image, boxes[~crowd], classes[~crowd], class_names,
                             None if masks is None else masks[~crowd], crowd_boxes=boxes[crowd])


def _mask(record, height, width):
    from tfrcnn.data.coco import annotation_mask

    try:
        return annotation_mask(record["segmentation"], height, width)
    except ValueError as e:
        raise ValueError(f"annotation {record.get('id', '')} of image {record.get('image_id')}: {e}") from None
