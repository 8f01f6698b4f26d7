"""The test-time transform and its way back: one home for each step of inference around the network.

`Transform` turns a decoded image into the network's input (keep-ratio resize, normalize, pad) exactly as evaluation
batches hold it. `Postprocessor` maps the network's detections back: boxes to original-image pixels, model classes to
the dataset's category ids, box-frame masks pasted into the image as test_cfg.rcnn says, and COCO result records.
Export, evaluation, predict.py, the main job's drawings and the benchmark all call these, as torchvision's
`GeneralizedRCNNTransform` and Detectron2's `detector_postprocess` serve their libraries.

Frames: the network's boxes are [y1, x1, y2, x2] in padded-input pixels. Images sit top-left in the padded input, so
a box maps to the original image by dividing y by scale[0] and x by scale[1] (scale = resized / original), no offset.
"""
import json
import os

import numpy as np
import tensorflow as tf

from tfrcnn.data.coco import encode_mask, resolve_categories
from tfrcnn.ops.image import pad_to, rescaled_size, resize_and_normalize, round_up
from tfrcnn.ops.masks import PASTE_MODES, paste_masks

RESULTS_NAME = "detections.json"  # predict_images' COCO results
# Masks are pasted in groups of this many, each group into windows of one size (see Postprocessor.paste_in_windows).
_PASTE_GROUP = 16


class Transform:
    """The test-time transform of `config.data`: a decoded RGB image → the network's input.

    Keep-ratio resize to the largest `img_scale` (MMDetection's multi-scale configs test at (1333, 800)), normalize,
    pad. `data.test_padding` 'pad_size' pads every image to the static canvas `data.padded_size()` (the resize
    shrinks an image that would not fit it); 'size_divisor' pads a batch to its largest image rounded up to
    `data.size_divisor`, as MMDetection's test-time Pad and torchvision's batching do.
    """

    def __init__(self, data_cfg):
        scales = data_cfg.scales()
        self.scale = (max(s[0] for s in scales), max(s[1] for s in scales))  # (long, short)
        self.static = data_cfg.test_padding == "pad_size"
        self.canvas = data_cfg.padded_size()
        self.size_divisor = data_cfg.size_divisor
        self._keep_ratio, self._rounding = data_cfg.keep_ratio, data_cfg.resize_rounding
        self._norm, self._normalize_first = data_cfg.img_norm_cfg, data_cfg.normalize_before_resize

    def preprocess(self, image, pad=True):
        """One decoded RGB image, uint8 or float [h, w, 3] of any size →
        (normalized image float32, image_size int32 [2] its resized (h, w), scale float32 [2] resized / original
        per axis). The image is padded as `pad` pads it alone; `pad=False` returns it unpadded [new_h, new_w, 3],
        to be padded with the other images of its batch."""
        size = tf.shape(image)[:2]
        new_size = rescaled_size(size[0], size[1], float(self.scale[0]), float(self.scale[1]), self._keep_ratio,
                                 self._rounding, fit=self.canvas if self.static else None)
        scale = tf.cast(new_size, tf.float32) / tf.cast(size, tf.float32)
        image = resize_and_normalize(image, new_size, self._norm, self._normalize_first)
        return (self.pad(image) if pad else image), new_size, scale

    def pad(self, images):
        """Preprocessed unpadded images: [h, w, 3], a dense batch [B, h, w, 3], or a tf.RaggedTensor [B, (h), (w), 3]
        of several sizes → zero-padded at the bottom and right to the static canvas, or to the largest image rounded
        up to size_divisor."""
        if isinstance(images, tf.RaggedTensor):
            images = images.to_tensor()
        if self.static:
            return pad_to(images, *self.canvas)
        size = tf.shape(images)
        return pad_to(images, round_up(size[-3], self.size_divisor), round_up(size[-2], self.size_divisor))


class Postprocessor:
    """The way back from the network's detections to the original image.

    Args:
      category_ids: the dataset's category id of each model class 1..N (class c is category_ids[c - 1]).
      class_names: their names; default the ids as text.
      mask_paste: how a box-frame mask goes into the image (test_cfg.rcnn.mask_paste): "mmdet" or "torchvision"
        (`tfrcnn.ops.masks.paste_masks`, each mode with its own comparison).
      mask_threshold: the binarization threshold of pasted masks (test_cfg.rcnn.mask_thr_binary).
    """

    def __init__(self, category_ids, class_names=None, mask_paste="mmdet", mask_threshold=0.5):
        if mask_paste not in PASTE_MODES:
            raise ValueError(f"mask_paste must be one of {', '.join(PASTE_MODES)}, got {mask_paste!r}")
        self.category_ids = [int(i) for i in category_ids]
        self.class_names = [str(i) for i in self.category_ids] if class_names is None else list(class_names)
        self.mask_paste, self.mask_threshold = mask_paste, float(mask_threshold)
        self._ids = tf.constant([0] + self.category_ids, tf.int32)  # class 0 (padding) stays 0
        # paste_in_windows' pastes in a graph: eager op-by-op dispatch would cost more than small windows' arithmetic
        self._paste_window = tf.function(lambda masks, boxes, size: self.paste(masks, boxes, (size[0], size[1])),
                                         reduce_retracing=True)

    @classmethod
    def from_config(cls, config, categories=None):
        """The config's way back; `categories` (ids, names) instead of `resolve_categories(config.data)`."""
        ids, names = categories or resolve_categories(config.data)
        rcnn = config.test_cfg.rcnn
        return cls(ids, names, mask_paste=rcnn.mask_paste, mask_threshold=rcnn.mask_thr_binary)

    @property
    def label_map(self):
        """{category id: name} of the classes 1..N."""
        return dict(zip(self.category_ids, self.class_names))

    def boxes_to_original(self, boxes, scale, original_size):
        """[B, K, 4] boxes in padded-input pixels, scale [B, 2] (resized / original, y and x), original_size int
        [B, 2] (h, w) → float32 [B, K, 4] in original-image pixels, clipped to the image."""
        boxes = tf.cast(boxes, tf.float32) / tf.tile(tf.cast(scale, tf.float32), [1, 2])[:, None, :]
        return tf.clip_by_value(boxes, 0.0, tf.tile(tf.cast(original_size, tf.float32), [1, 2])[:, None, :])

    def category_ids_of(self, classes):
        """int model classes 0..N (any shape) → int32 category ids; class 0 (padding) stays 0."""
        return tf.gather(self._ids, tf.cast(classes, tf.int32))

    def paste(self, masks, boxes, image_size):
        """[B, K, S, S] box-frame mask probabilities, [B, K, 4] boxes in the target image's pixels, its (H, W) →
        uint8 [B, K, H, W] 0/1: pasted and thresholded as the config says."""
        return paste_masks(masks, boxes, image_size, mode=self.mask_paste, threshold=self.mask_threshold)

    def __call__(self, outputs, image_size, scale, original_size, paste=False):
        """The detectors' outputs (padded-input frame, model classes) → the outputs of tfrcnn.export's signatures.

        image_size int [B, 2]: each image's resized (h, w); scale float32 [B, 2] resized / original (y, x);
        original_size int [B, 2] (h, w); paste: also `detection_masks_image`, the masks pasted into each original
        image (uint8 0/1 [B, K, H, W] at the batch's largest H and W, 0 beyond each image's own size).
        """
        boxes = self.boxes_to_original(outputs["detection_boxes"], scale, original_size)
        size = tf.cast(original_size, tf.float32)
        result = {
            "detection_boxes": boxes,
            "detection_scores": tf.cast(outputs["detection_scores"], tf.float32),
            "detection_classes": self.category_ids_of(outputs["detection_classes"]),
            "num_detections": tf.cast(outputs["num_detections"], tf.int32),
            "image_info": tf.stack([size, tf.cast(image_size, tf.float32), scale, tf.zeros_like(scale)], axis=1),
        }
        if "detection_masks" in outputs:
            masks = result["detection_masks"] = tf.cast(outputs["detection_masks"], tf.float32)
            if paste:
                height, width = tf.reduce_max(original_size[:, 0]), tf.reduce_max(original_size[:, 1])
                inside = tf.logical_and(tf.range(height)[None, :, None] < original_size[:, 0, None, None],
                                        tf.range(width)[None, None, :] < original_size[:, 1, None, None])
                pasted = self.paste(masks, boxes, (height, width))
                result["detection_masks_image"] = pasted * tf.cast(inside, tf.uint8)[:, None]
        return result

    def paste_in_windows(self, masks, boxes, height, width):
        """`paste` for one image on the host: [K, S, S] box-frame probabilities, [K, 4] boxes in original pixels →
        uint8 [K, H, W] 0/1 (a view of a Fortran-ordered [H, W, K] array, what pycocotools encodes).

        A pasted mask reaches at most a mask pixel past its box, so each one is pasted into a window around its box
        rather than into the whole image (which would be most of an evaluation's time on a CPU). Windows start at
        integer pixels, and shifting a float32 box by a non-negative integer it exceeds is exact, so "mmdet" pastes
        give the same bits as a whole-image paste. Masks go in groups of similar window area, a group at its
        largest window.
        """
        masks, boxes = np.asarray(masks, np.float32), np.asarray(boxes, np.float32).reshape(-1, 4)
        reach = (boxes[:, 2:] - boxes[:, :2]) / masks.shape[-1] + 2.0  # [K, 2]: a mask pixel, and then some
        limit = np.array([height, width])
        start = np.clip(np.floor(boxes[:, :2] - reach), 0, limit).astype(np.int64)  # [K, 2] (y, x)
        extent = np.maximum(np.clip(np.ceil(boxes[:, 2:] + reach), 0, limit).astype(np.int64) - start, 0)
        out = np.zeros((height, width, len(masks)), np.uint8, order="F")
        order = np.argsort(extent[:, 0] * extent[:, 1], kind="stable")
        for group in (order[i:i + _PASTE_GROUP] for i in range(0, len(order), _PASTE_GROUP)):
            window = extent[group].max(0)
            if window.min() == 0:
                continue  # wholly outside the image
            local = boxes[group] - np.tile(start[group], 2).astype(np.float32)
            pasted = self._paste_window(masks[None, group], local[None], tf.constant(window, tf.int32))
            for k, pixels in zip(group, pasted[0].numpy()):
                (y0, x0), (h, w) = start[k], extent[k]
                out[y0:y0 + h, x0:x0 + w, k] = pixels[:h, :w]
        return out.transpose(2, 0, 1)


def coco_results(image_id, boxes, scores, category_ids, masks=None):
    """One image's detections → COCO result records (what pycocotools' loadRes reads; plain Python numbers).

    boxes [K, 4] [y1, x1, y2, x2] in original-image pixels (written as [x, y, width, height]); scores [K]; category
    ids int [K], rows with 0 (padding) dropped; masks None or [K, H, W] 0/1 in the image, each written as a
    compressed RLE `segmentation`.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores, category_ids = np.asarray(scores).reshape(-1), np.asarray(category_ids).reshape(-1)
    keep = np.flatnonzero(category_ids > 0)
    y1, x1, y2, x2 = boxes[keep].T
    records = [{"image_id": int(image_id), "category_id": int(c), "bbox": xywh, "score": float(s)}
               for c, xywh, s in zip(category_ids[keep], np.stack([x1, y1, x2 - x1, y2 - y1], 1).tolist(),
                                     scores[keep])]
    if masks is not None and len(keep):
        masks = np.asarray(masks, np.uint8)
        masks = masks[keep] if len(keep) < len(masks) else masks  # (a copy only when rows are dropped)
        for record, rle in zip(records, encode_mask(masks.transpose(1, 2, 0))):  # paste_in_windows': no copy
            record["segmentation"] = rle
    return records


def predict_images(detect, paths, output_dir, class_names, score_threshold=0.5, verbose=True):
    """Runs a detector on image files: `<output_dir>/<stem>.png` per image with the detections scoring at least
    `score_threshold` drawn, and every detection in `<output_dir>/detections.json` as COCO results.

    Args:
      detect: uint8 [H, W, 3] → the export's outputs for a batch of one, as numpy (boxes in original pixels,
        category ids, `detection_masks_image` pasted for Mask R-CNN).
      paths: image files; an image's `image_id` is its stem when that is an integer, else its position in `paths`.
      class_names: {category id: name} for the labels.
      verbose: print a line per image and one for the JSON.
    Returns the COCO results list, each record with its image's `file_name`.
    """
    from PIL import Image

    from tfrcnn.visualize import draw_detections

    os.makedirs(output_dir, exist_ok=True)
    results = []
    for index, path in enumerate(paths):
        with Image.open(path) as picture:
            image = np.asarray(picture.convert("RGB"))
        stem = os.path.splitext(os.path.basename(path))[0]
        out = {k: v[0] for k, v in detect(image).items()}
        n = int(out["num_detections"])
        masks = out.get("detection_masks_image")
        masks = None if masks is None else masks[:n, :image.shape[0], :image.shape[1]]
        found = coco_results(int(stem) if stem.isdigit() else index, out["detection_boxes"][:n],
                             out["detection_scores"][:n], out["detection_classes"][:n], masks)
        results += [dict(r, file_name=os.path.basename(path)) for r in found]
        drawing = draw_detections(image, out["detection_boxes"][:n], out["detection_classes"][:n],
                                  out["detection_scores"][:n], class_names, masks=masks,
                                  score_threshold=score_threshold)
        png = os.path.join(output_dir, stem + ".png")
        Image.fromarray(drawing).save(png)
        if verbose:
            shown = [r for r in found if r["score"] >= score_threshold]
            listing = ", ".join(f"{class_names.get(r['category_id'], r['category_id'])} {r['score']:.2f}"
                                for r in shown[:5])
            print(f"{path}: {len(found)} detections, {len(shown)} drawn (score >= {score_threshold:g})"
                  f"{': ' + listing if listing else ''}{' ...' if len(shown) > 5 else ''} -> {png}")
    json_path = os.path.join(output_dir, RESULTS_NAME)
    with open(json_path, "w") as f:
        json.dump(results, f)
    if verbose:
        print(f"wrote {len(results)} detections on {len(paths)} images to {json_path}")
    return results
