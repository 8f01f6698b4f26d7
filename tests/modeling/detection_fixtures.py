"""Test data and scoring for the detector tests: tiny synthetic scenes and COCO AP through pycocotools."""
import contextlib
import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import tfrcnn
from tfrcnn.ops.masks import mask_targets, paste_masks

TINY_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "mask_rcnn_r18_tiny.yaml")
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def tiny_config(overrides=None, faster=False):
    """The tiny R18 Mask R-CNN config of the tests; `faster` turns it into a Faster R-CNN."""
    extra = ("model.type=FasterRCNN,model.roi_head.mask_roi_extractor=null,model.roi_head.mask_head=null,"
             "evaluation.metric=[bbox]") if faster else ""
    joined = ",".join(x for x in (extra, overrides) if x)
    return tfrcnn.load_config(TINY_CONFIG, joined or None)


def shapes_scenes(num_images, size, seed=0, max_objects=3, mask_crop=112):
    """Filled rectangles (class 1) and ellipses (class 2) in random colours on noisy backgrounds.

    Returns (images float32 [N, size, size, 3] normalized, targets dict as tfrcnn.structures defines it with
    M = max_objects, full-image masks float32 [N, M, size, size] for scoring).
    """
    rng = np.random.default_rng(seed)
    images = []
    boxes = np.zeros((num_images, max_objects, 4), np.float32)
    classes = np.zeros((num_images, max_objects), np.int32)
    masks = np.zeros((num_images, max_objects, size, size), np.float32)
    for i in range(num_images):
        image = Image.fromarray(rng.integers(60, 120, (size, size, 3), dtype=np.uint8))
        n = int(rng.integers(1, max_objects + 1))
        drawn = []
        for k in range(n):
            h, w = rng.integers(size // 5, size // 2, 2)
            y, x = rng.integers(0, size - h), rng.integers(0, size - w)
            classes[i, k] = rng.integers(1, 3)
            mask = Image.new("L", (size, size))
            shape = ImageDraw.Draw(mask).rectangle if classes[i, k] == 1 else ImageDraw.Draw(mask).ellipse
            shape([x, y, x + w - 1, y + h - 1], fill=255)
            image.paste(Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(140, 256, 3))), mask=mask)
            drawn.append(np.asarray(mask) > 0)
        for k in range(n):  # later shapes occlude earlier ones: keep what stays visible
            visible = drawn[k] & ~np.any(drawn[k + 1:], axis=0) if k + 1 < n else drawn[k]
            ys, xs = np.nonzero(visible)
            boxes[i, k] = [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
            masks[i, k] = visible
        images.append((np.asarray(image, np.float32) - MEAN) / STD)
    # The data pipeline's layout: each gt mask cropped to its own box.
    full_frames = np.tile(np.array([0, 0, size, size], np.float32), (num_images, max_objects, 1))
    index = np.tile(np.arange(max_objects, dtype=np.int32), (num_images, 1))
    cropped = mask_targets(masks, full_frames, boxes, index, mask_crop, binarize=False).numpy()
    targets = {"gt_boxes": boxes, "gt_classes": classes, "gt_masks": cropped,
               "image_size": np.full((num_images, 2), size, np.int32)}
    return np.stack(images), targets, masks


def coco_ap(targets, full_masks, detections, with_mask=True):
    """COCO AP (pycocotools) of `detections` (a model's outputs, numpy) against the scenes' gt.

    Returns {"bbox": stats[12], "segm": stats[12]}; stats[0] is AP@[.5:.95], stats[1] AP50.
    """
    size = full_masks.shape[-1]
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "rectangle"}, {"id": 2, "name": "ellipse"}]}
    for i in range(len(full_masks)):
        gt["images"].append({"id": i + 1, "height": size, "width": size})
        for k in np.flatnonzero(targets["gt_classes"][i]):
            y1, x1, y2, x2 = targets["gt_boxes"][i, k].tolist()
            rle = mask_utils.encode(np.asfortranarray(full_masks[i, k].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1,
                                      "category_id": int(targets["gt_classes"][i, k]), "bbox": [x1, y1, x2 - x1, y2 - y1],
                                      "area": float(full_masks[i, k].sum()), "iscrowd": 0, "segmentation": rle})
    pasted = None
    if with_mask:
        pasted = paste_masks(detections["detection_masks"], detections["detection_boxes"], (size, size),
                             threshold=0.5).numpy()
    results = []
    for i in range(len(full_masks)):
        for k in range(int(detections["num_detections"][i])):
            y1, x1, y2, x2 = [float(v) for v in detections["detection_boxes"][i, k]]
            r = {"image_id": i + 1, "category_id": int(detections["detection_classes"][i, k]),
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(detections["detection_scores"][i, k])}
            if with_mask:
                rle = mask_utils.encode(np.asfortranarray(pasted[i, k]))
                rle["counts"] = rle["counts"].decode()
                r["segmentation"] = rle
            results.append(r)
    stats = {}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        for kind in (["bbox", "segm"] if with_mask else ["bbox"]):
            if not results:
                stats[kind] = np.zeros(12)
                continue
            evaluator = COCOeval(coco, coco.loadRes([dict(r) for r in results]), kind)
            evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
            stats[kind] = evaluator.stats
    return stats


def batch_dataset(images, targets, batch_size):
    """A repeating tf.data pipeline of (images, targets) batches."""
    ds = tf.data.Dataset.from_tensor_slices((images, targets))
    return ds.repeat().batch(batch_size, drop_remainder=True)
