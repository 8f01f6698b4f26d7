"""How much a trained detector's detections move when it computes in another precision: the share of its float32
detections that have a match at the other precision (same class, box IoU >= 0.9, |Δscore| <= 0.05), and the share
of the matched ones whose pasted masks reach IoU >= 0.9. Both models are the run's checkpoint, through
DetectionModule (what an export serves), at the config's own score threshold.

    python benchmarks/precision_match.py --model_dir runs/shapes --images 'data/shapes/val/*.jpg'

Prints one JSON line.
"""
import argparse
import glob
import json

import numpy as np
import tensorflow as tf
from PIL import Image

from tfrcnn.export import DetectionModule
from tfrcnn.training.checkpoints import load_model


def box_iou(a, b):
    """IoU [N, M] of [y1, x1, y2, x2] boxes a [N, 4] and b [M, 4]."""
    a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
    inter = (np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
             * np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None))
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def detections(module, image):
    out = {k: v[0].numpy() for k, v in module.detect(tf.constant(image[None])).items()}
    n = int(out["num_detections"])
    masks = out["detection_masks_image"][:n] > 0 if "detection_masks_image" in out else None
    return out["detection_boxes"][:n], out["detection_scores"][:n], out["detection_classes"][:n], masks


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--images", required=True, help="a quoted glob of image files")
    parser.add_argument("--precision", default="mixed_bfloat16", choices=["mixed_bfloat16", "mixed_float16"])
    args = parser.parse_args()
    modules = {}
    for precision in ("float32", args.precision):
        overrides = None if precision == "float32" else f"runtime.mixed_precision={precision}"
        model, config, _ = load_model(args.model_dir, overrides=overrides)
        modules[precision] = DetectionModule(model, config, paste_masks=config.model.with_mask)
    paths = sorted(glob.glob(args.images))
    total = matched = masks_ok = 0
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        (b, s, c, m), (b2, s2, c2, m2) = [detections(modules[p], image) for p in ("float32", args.precision)]
        total += len(b)
        if not len(b) or not len(b2):
            continue
        ious = box_iou(b, b2) * (c[:, None] == c2[None, :]) * (np.abs(s[:, None] - s2[None, :]) <= 0.05)
        best, found = ious.argmax(axis=1), np.flatnonzero(ious.max(axis=1) >= 0.9)
        matched += len(found)
        if m is not None:
            masks_ok += sum((m[k] & m2[best[k]]).sum() >= 0.9 * (m[k] | m2[best[k]]).sum() for k in found)
    print(json.dumps({"model_dir": args.model_dir, "images": len(paths), "precision": args.precision,
                      "float32_detections": total, "matched": matched,
                      "matched_share": round(matched / max(total, 1), 4),
                      "masks_at_iou_0.9_share": round(masks_ok / max(matched, 1), 4) if config.model.with_mask
                      else None}))


if __name__ == "__main__":
    main()
