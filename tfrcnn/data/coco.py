"""COCO annotation files: loading with one clear error for bad input, categories, instance masks.

Boxes in a COCO file are [x, y, w, h] in original-image pixels; everything returned here keeps that frame
unless a docstring says otherwise.
"""
import json
import numbers
import os

import numpy as np
from pycocotools import mask as mask_utils

_TOP_KEYS = ("images", "annotations", "categories")
# COCO 2017's 80 categories: model class c is category COCO_CATEGORY_IDS[c - 1], named COCO_CLASSES[c - 1].
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90)
COCO_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
    'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone',
    'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear',
    'hair drier', 'toothbrush')


class CocoFormatError(ValueError):
    """A file that is not a usable COCO annotation file; the message starts with the file's path."""


def load_coco(path):
    """Reads and checks a COCO annotation file.

    Returns the parsed dict. Raises CocoFormatError naming the file and the first bad key or value: not JSON,
    not an object with images / annotations / categories, an image without id / file_name / height / width, an
    annotation whose image_id or category_id is unknown or whose bbox is not four numbers, a repeated id.
    """
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise CocoFormatError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CocoFormatError(f"{path}: not a COCO annotation file: not JSON ({e})") from None
    check_coco(data, str(path))
    return data


def check_coco(data, source="<dict>"):
    """Raises CocoFormatError (prefixed with `source`) if `data` is not a COCO detection dict."""
    def fail(message):
        raise CocoFormatError(f"{source}: not a COCO annotation file: {message}")

    if not isinstance(data, dict):
        fail(f"the top level is a {type(data).__name__}, not an object with keys {', '.join(_TOP_KEYS)}")
    missing = [k for k in _TOP_KEYS if k not in data]
    if missing:
        fail(f"it lacks the key(s) {', '.join(repr(k) for k in missing)} (it has {sorted(data)[:8]})")
    for key in _TOP_KEYS:
        if not isinstance(data[key], list):
            fail(f"'{key}' is a {type(data[key]).__name__}, not a list")

    image_ids = _unique_ids(data["images"], "images", ("id", "file_name", "height", "width"), fail)
    for i, image in enumerate(data["images"]):
        for key in ("height", "width"):
            if not _is_int(image[key]) or image[key] <= 0:
                fail(f"images[{i}] (id {image['id']}): '{key}' is {image[key]!r}, not a positive integer")
    category_ids = _unique_ids(data["categories"], "categories", ("id", "name"), fail)
    _unique_ids(data["annotations"], "annotations", ("id", "image_id", "category_id", "bbox"), fail)
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}] (id {ann['id']})"
        if ann["image_id"] not in image_ids:
            fail(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in category_ids:
            fail(f"{where}: category_id {ann['category_id']!r} is not in 'categories'")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            fail(f"{where}: bbox {bbox!r} is not [x, y, width, height]")


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _unique_ids(items, key, required, fail):
    ids = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            fail(f"{key}[{i}] is a {type(item).__name__}, not an object")
        absent = [k for k in required if k not in item]
        if absent:
            fail(f"{key}[{i}] lacks {', '.join(repr(k) for k in absent)}")
        if not _is_int(item["id"]):
            fail(f"{key}[{i}]: id {item['id']!r} is not an integer")
        if item["id"] in ids:
            fail(f"{key}[{i}]: id {item['id']} appears twice")
        ids.add(item["id"])
    return ids


def categories(data):
    """(category ids sorted, their names): the model's classes 1..N in order, as MMDetection's CocoDataset."""
    cats = sorted(data["categories"], key=lambda c: c["id"])
    return [c["id"] for c in cats], [c["name"] for c in cats]


def resolve_categories(data_cfg):
    """(category ids, class names) of the model's classes 1..N: `data.category_ids` / `data.classes`, else
    the categories of the first split's ann_file that exists (sorted by id, as MMDetection)."""
    if data_cfg.category_ids is not None:
        ids = list(data_cfg.category_ids)
        return ids, list(data_cfg.classes) if data_cfg.classes is not None else [str(i) for i in ids]
    for split in ("train", "val", "test"):
        ann_file = getattr(data_cfg, split).ann_file
        if ann_file and os.path.isfile(ann_file):
            return categories(load_coco(ann_file))
    raise ValueError("data.category_ids is not set and no split's ann_file exists to read the categories from; "
                     "set data.category_ids (and data.classes) in the config")


def annotations_by_image(data):
    """{image id: [annotations]} in file order, every image present (those without annotations map to [])."""
    by_image = {image["id"]: [] for image in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    return by_image


def annotation_mask(segmentation, height, width):
    """An annotation's mask as uint8 [height, width] in {0, 1} (original-image pixels).

    `segmentation` is COCO's: a list of polygons (several for a multi-part object, merged by union), an
    uncompressed RLE (crowd: {"size", "counts": [ints]}) or a compressed one ({"counts": str}). Raises ValueError
    for anything else, or for a polygon of fewer than three points.
    """
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), np.uint8)
        if any(not isinstance(p, list) or len(p) < 6 or len(p) % 2 for p in segmentation):
            raise ValueError("a polygon has fewer than 3 points or an odd number of coordinates")
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(f"RLE size {segmentation['size']} differs from the image's [{height}, {width}]")
        counts = segmentation["counts"]
        rle = mask_utils.frPyObjects(segmentation, height, width) if isinstance(counts, list) else segmentation
    else:
        raise ValueError(f"segmentation is neither polygons nor RLE: {str(segmentation)[:60]}")
    return mask_utils.decode(rle).astype(np.uint8)


def encode_mask(mask):
    """0/1 masks → COCO compressed RLEs with an ascii 'counts' (JSON-serializable), as pycocotools' encode: [H, W]
    gives one RLE, [H, W, K] a list (K masks; Fortran order spares a copy)."""
    rles = mask_utils.encode(np.asfortranarray(mask, np.uint8))
    if isinstance(rles, dict):
        return dict(rles, counts=rles["counts"].decode("ascii"))
    return [dict(rle, counts=rle["counts"].decode("ascii")) for rle in rles]
