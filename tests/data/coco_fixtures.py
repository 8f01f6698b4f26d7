"""A small COCO dataset written by the tests: every case the converter and the pipeline must get right.

Images (original pixels):
  1 "scène_1.png"  48×64 RGB PNG: a polygon (cat 17), a multi-polygon (cat 3), a crowd RLE (cat 42),
                   a box past the right/bottom border (cat 3, clipped), a zero-area box (cat 17, skipped).
  2 "gray.png"     40×30 grayscale PNG: a polygon (cat 42).
  3 "rgba.png"     32×32 RGBA PNG: a polygon (cat 3).
  4 "empty.jpg"    24×40 JPEG without annotations.
Categories are sparse: 3, 17, 42.
"""
import json
import os

import numpy as np
from PIL import Image

CATEGORY_IDS = [3, 17, 42]
ZERO_AREA_ANN_ID = 15


def _rle_counts(mask):
    """Uncompressed column-major RLE counts of a 0/1 mask (COCO's crowd format), written independently of
    pycocotools so that the test checks its decoding too."""
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return counts


def write_coco(root, rng=None):
    """Writes images under root/images and root/annotations.json; returns (ann_path, image_dir, coco dict)."""
    rng = rng or np.random.default_rng(0)
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    pixels = {
        "scène_1.png": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
        "gray.png": rng.integers(0, 256, (40, 30), dtype=np.uint8),
        "rgba.png": rng.integers(0, 256, (32, 32, 4), dtype=np.uint8),
        "empty.jpg": rng.integers(0, 256, (24, 40, 3), dtype=np.uint8),
    }
    for name, array in pixels.items():
        Image.fromarray(array).save(os.path.join(image_dir, name))
    crowd = np.zeros((48, 64), np.uint8)
    crowd[5:20, 40:60] = 1
    images = [
        {"id": 1, "file_name": "scène_1.png", "height": 48, "width": 64},
        {"id": 2, "file_name": "gray.png", "height": 40, "width": 30},
        {"id": 3, "file_name": "rgba.png", "height": 32, "width": 32},
        {"id": 4, "file_name": "empty.jpg", "height": 24, "width": 40},
    ]
    annotations = [
        {"id": 11, "image_id": 1, "category_id": 17, "bbox": [4.0, 6.0, 20.0, 16.0], "area": 160.0, "iscrowd": 0,
         "segmentation": [[4, 6, 24, 6, 14, 22]]},
        {"id": 12, "image_id": 1, "category_id": 3, "bbox": [2.0, 26.0, 30.0, 18.0], "area": 200.0, "iscrowd": 0,
         "segmentation": [[2, 26, 12, 26, 12, 36, 2, 36], [20, 34, 32, 34, 32, 44, 20, 44]]},
        {"id": 13, "image_id": 1, "category_id": 42, "bbox": [40.0, 5.0, 20.0, 15.0], "area": 300.0, "iscrowd": 1,
         "segmentation": {"size": [48, 64], "counts": _rle_counts(crowd)}},
        {"id": 14, "image_id": 1, "category_id": 3, "bbox": [50.0, 30.0, 30.0, 30.0], "area": 252.0, "iscrowd": 0,
         "segmentation": [[50, 30, 64, 30, 64, 48, 50, 48]]},
        {"id": ZERO_AREA_ANN_ID, "image_id": 1, "category_id": 17, "bbox": [10.0, 10.0, 0.0, 5.0], "area": 0.0,
         "iscrowd": 0, "segmentation": []},
        {"id": 21, "image_id": 2, "category_id": 42, "bbox": [3.0, 5.0, 20.0, 30.0], "area": 300.0, "iscrowd": 0,
         "segmentation": [[3, 5, 23, 5, 23, 35, 3, 35]]},
        {"id": 31, "image_id": 3, "category_id": 3, "bbox": [8.0, 4.0, 16.0, 24.0], "area": 192.0, "iscrowd": 0,
         "segmentation": [[8, 4, 24, 4, 16, 28]]},
    ]
    categories = [{"id": 3, "name": "trois"}, {"id": 17, "name": "dix-sept"}, {"id": 42, "name": "quarante-deux"}]
    data = {"images": images, "annotations": annotations, "categories": categories}
    ann_path = os.path.join(root, "annotations.json")
    with open(ann_path, "w", encoding="utf8") as f:
        json.dump(data, f, ensure_ascii=False)
    return ann_path, image_dir, data


def crop_reference(mask, box, size):
    """numpy: mask [H, W] sampled at size × size bin centres over box [y1, x1, y2, x2] (edge pixels repeat)."""
    def axis(lo, hi, n):
        centres = lo + (np.arange(size) + 0.5) * (hi - lo) / size - 0.5
        centres = np.clip(centres, 0, n - 1)
        low = np.floor(centres).astype(int)
        high = np.minimum(low + 1, n - 1)
        return low, high, centres - low
    y0, y1i, wy = axis(box[0], box[2], mask.shape[0])
    x0, x1i, wx = axis(box[1], box[3], mask.shape[1])
    m = mask.astype(np.float64)
    rows = m[y0] * (1 - wy)[:, None] + m[y1i] * wy[:, None]
    return rows[:, x0] * (1 - wx)[None, :] + rows[:, x1i] * wx[None, :]
