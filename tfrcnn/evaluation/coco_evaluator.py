"""COCO evaluation: detections in original-image pixels → COCO results → pycocotools COCOeval (bbox and segm).

The evaluator is host-side bookkeeping (numpy and pycocotools per image); the way back from the network's output
(boxes to original pixels, classes to category ids, masks pasted, the COCO records) is `tfrcnn.inference`'s, the
same as exported models'.

Frames: `add_detections` takes boxes [y1, x1, y2, x2] in ORIGINAL image pixels; `add_batch` takes a model's
output, whose boxes are in padded-network-input pixels, and maps them back. Model class c (1-based) is the
dataset's category `category_ids[c - 1]`.
"""
import contextlib
import copy
import io
import math
import sys
import time
import warnings

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tfrcnn.data.coco import check_coco, encode_mask, load_coco
from tfrcnn.inference import Postprocessor, coco_results

IOU_TYPES = ("bbox", "segm")
# COCOeval.stats order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_STAT_LABELS = (
    ("Average Precision", "(AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]"),
    ("Average Precision", "(AP) @[ IoU=0.50      | area=   all | maxDets=100 ]"),
    ("Average Precision", "(AP) @[ IoU=0.75      | area=   all | maxDets=100 ]"),
    ("Average Precision", "(AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]"),
    ("Average Precision", "(AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]"),
    ("Average Precision", "(AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]"),
    ("Average Recall   ", "(AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]"),
    ("Average Recall   ", "(AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ]"),
    ("Average Recall   ", "(AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]"),
    ("Average Recall   ", "(AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]"),
    ("Average Recall   ", "(AR) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]"),
    ("Average Recall   ", "(AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]"),
)


@contextlib.contextmanager
def _quiet(verbose):
    """pycocotools prints progress on stdout; keep it only when asked."""
    if verbose:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def _coco_api(dataset, verbose=False):
    coco = COCO()
    coco.dataset = dataset
    with _quiet(verbose):
        coco.createIndex()
    return coco


class CocoEvaluator:
    """Collects detections image by image and evaluates them with pycocotools.

    Only the images that were added (with or without detections) are evaluated: COCOeval's `params.imgIds` is
    set to them, so a quick run over the first `max_images` images is scored on those images alone (a gt object
    in an image never added would otherwise count as missed).

    Args:
      ground_truth: a COCO annotation file's path, or an already-loaded COCO dict (e.g. from
        `tfrcnn.data.tfrecord.coco_from_tfrecords`). A dict is deep-copied: COCOeval writes into its annotations.
        An annotation without "iscrowd" is not crowd; one without "area" gets its box's area; polygons that
        pycocotools cannot read (fewer than 3 points, `[]`) are dropped, and an annotation left without any gets
        an empty mask (it still counts as an object, as its box does in "bbox"). Nothing else is changed, so the
        numbers are pycocotools' own on the file.
      iou_types: a subset of ("bbox", "segm"). "segm" needs masks in every `add_detections` call; use ("bbox",)
        for Faster R-CNN.
      category_ids: the dataset category id of each model class: class c → category_ids[c - 1]. None: the ground
        truth's category ids, sorted (ground truth from TFRecords lacks the categories without objects in them:
        then pass the model's own list). Ids the ground truth lacks are added to it, with a warning.
      mask_paste_mode: `paste_masks` mode for box-frame masks: "mmdet" (thresholded `>= mask_threshold`, as
        MMDetection does) or "torchvision" (its exact paste, thresholded `> mask_threshold` as its COCO evaluation).
      mask_threshold: binarization threshold of pasted mask probabilities.
      verbose: let pycocotools print its progress and its own summary.
    """

    def __init__(self, ground_truth, iou_types=IOU_TYPES, category_ids=None, mask_paste_mode="mmdet",
                 mask_threshold=0.5, verbose=False):
        if isinstance(ground_truth, dict):
            check_coco(ground_truth)
            dataset = copy.deepcopy(ground_truth)
        else:
            dataset = load_coco(ground_truth)
        for ann in dataset["annotations"]:
            # COCOeval reads both unconditionally; Model Garden's decoder defaults them the same way.
            ann.setdefault("iscrowd", 0)
            ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
        self.iou_types = (iou_types,) if isinstance(iou_types, str) else tuple(iou_types)
        unknown = [t for t in self.iou_types if t not in IOU_TYPES]
        if unknown or not self.iou_types:
            raise ValueError(f"CocoEvaluator: iou_types must be a non-empty subset of {IOU_TYPES}, got {iou_types!r}")
        if "segm" in self.iou_types:
            if any("segmentation" not in a for a in dataset["annotations"]):
                raise ValueError("CocoEvaluator: the ground truth has annotations without 'segmentation' (TFRecords "
                                 "written without masks?); pass iou_types=('bbox',) to evaluate boxes only")
            _repair_polygons(dataset)
        known = sorted(c["id"] for c in dataset["categories"])
        self.category_ids = tuple(int(c) for c in (known if category_ids is None else category_ids))
        missing = sorted(set(self.category_ids) - set(known))
        if missing:
            # Ground truth from TFRecords only knows the categories that occur in them. A category without gt
            # changes no number (COCOeval leaves it out of every mean); listing it reports its AP as NaN.
            warnings.warn(f"CocoEvaluator: category_ids {missing} are not categories of the ground truth (it has "
                          f"{known}); they have no gt, and their detections count for nothing")
            dataset["categories"] += [{"id": c, "name": str(c)} for c in missing]
        self.postprocess = Postprocessor(self.category_ids, mask_paste=mask_paste_mode,
                                         mask_threshold=mask_threshold)
        self.verbose = verbose
        self.coco_gt = _coco_api(dataset, verbose)
        self.reset()

    def reset(self):
        """Forgets every added image and detection."""
        self._image_ids = []
        self._seen = set()
        self._records = []

    @property
    def num_images(self):
        """How many images were added so far."""
        return len(self._image_ids)

    @property
    def image_ids(self):
        """The ids of the images added so far, in the order they came."""
        return list(self._image_ids)

    def results(self, iou_type=None):
        """The COCO results collected so far (the JSON pycocotools' loadRes reads), new dicts: for `iou_type` "bbox"
        without masks, for "segm" without boxes (loadRes would take the box's area instead of the mask's for the
        area ranges; MMDetection and detectron2 drop it too); None: each with both, as predict.py writes them."""
        drop = {"bbox": "segmentation", "segm": "bbox"}.get(iou_type)
        return [{k: v for k, v in r.items() if k != drop} for r in self._records]

    # ------------------------------------------------------------------------------------------ collecting

    def add_detections(self, image_id, boxes, scores, classes, masks=None, masks_in_image=False):
        """Adds one image's detections (an empty set is fine: the image then counts as evaluated, all missed).

        Args:
          image_id: the COCO image id (an image of the ground truth; each image may be added once).
          boxes: [K, 4] [y1, x1, y2, x2] in original-image pixels.
          scores: [K] confidences.
          classes: int [K] model classes 1..N; rows with class 0 (padding) are dropped.
          masks: needed when evaluating "segm". [K, S, S] mask probabilities in each box's frame (pasted at the
            original size, then thresholded at `mask_threshold`), or with masks_in_image=True [K, H, W] masks
            already in the original image (0/1 or bool; float probabilities are thresholded at `mask_threshold`).
        """
        image_id = int(image_id)
        if image_id not in self.coco_gt.imgs:
            raise ValueError(f"CocoEvaluator: image id {image_id} is not in the ground truth")
        if image_id in self._seen:
            raise ValueError(f"CocoEvaluator: image id {image_id} was already added (is the dataset repeated?)")
        image = self.coco_gt.imgs[image_id]
        height, width = int(image["height"]), int(image["width"])

        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        classes = np.asarray(classes).astype(np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(classes):
            raise ValueError(f"CocoEvaluator: image {image_id}: {len(boxes)} boxes, {len(scores)} scores and "
                             f"{len(classes)} classes")
        keep = classes > 0
        bad = classes[keep & (classes > len(self.category_ids))]
        if bad.size:
            raise ValueError(f"CocoEvaluator: image {image_id}: model class {int(bad[0])} is beyond the "
                             f"{len(self.category_ids)} category_ids")
        if "segm" in self.iou_types and masks is None and keep.any():
            raise ValueError("CocoEvaluator: evaluating 'segm' needs masks; pass iou_types=('bbox',) for a model "
                             "without a mask head")
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        pasted = None
        if "segm" in self.iou_types and len(boxes):
            masks = np.asarray(masks)
            if len(masks) != len(keep):
                raise ValueError(f"CocoEvaluator: image {image_id}: {len(masks)} masks for {len(keep)} boxes")
            masks = masks[keep]
            if not masks_in_image:
                pasted = self.postprocess.paste_in_windows(masks, boxes, height, width)
            elif masks.shape[1:] != (height, width):
                raise ValueError(f"CocoEvaluator: image {image_id} is {height}x{width} but its masks are "
                                 f"{masks.shape[1]}x{masks.shape[2]}")
            else:
                pasted = masks >= self.postprocess.mask_threshold if masks.dtype.kind == "f" else masks != 0
        self._records += coco_results(image_id, boxes, scores, self.postprocess.category_ids_of(classes).numpy(),
                                      pasted)
        self._seen.add(image_id)
        self._image_ids.append(image_id)

    def add_batch(self, outputs, targets):
        """Adds a batch of model outputs on an evaluation batch.

        Args:
          outputs: the model's dict (tensors or arrays): detection_boxes [B, K, 4] [y1, x1, y2, x2] in padded-input
            pixels, detection_scores [B, K], detection_classes int [B, K] (0 = padding), num_detections int [B],
            and detection_masks [B, K, S, S] box-frame probabilities for Mask R-CNN.
          targets: the evaluation batch's targets: source_id string [B] (the COCO image id in decimal),
            original_size int [B, 2] (h, w), scale float [B, 2] (resized / original, for y and x).
        """
        outputs = {k: np.asarray(v) for k, v in outputs.items()}
        source_ids = np.asarray(targets["source_id"]).reshape(-1)
        original_size = np.asarray(targets["original_size"]).reshape(-1, 2)
        boxes = self.postprocess.boxes_to_original(outputs["detection_boxes"], np.asarray(targets["scale"]),
                                                   original_size).numpy()
        num = outputs.get("num_detections")
        masks = outputs.get("detection_masks")
        for b, source_id in enumerate(source_ids):
            try:
                image_id = int(source_id.decode() if isinstance(source_id, bytes) else source_id)
            except ValueError:
                raise ValueError(f"CocoEvaluator: source_id {source_id!r} is not a COCO image id") from None
            height, width = (int(v) for v in original_size[b])
            image = self.coco_gt.imgs.get(image_id)
            if image is not None and (image["height"], image["width"]) != (height, width):
                raise ValueError(f"CocoEvaluator: image {image_id} is {height}x{width} in the batch but "
                                 f"{image['height']}x{image['width']} in the ground truth")
            n = boxes.shape[1] if num is None else min(int(num[b]), boxes.shape[1])
            self.add_detections(image_id, boxes[b, :n], outputs["detection_scores"][b, :n],
                                outputs["detection_classes"][b, :n], None if masks is None else masks[b, :n])

    # ------------------------------------------------------------------------------------------ evaluating

    def evaluate(self):
        """Runs COCOeval on the images added so far.

        Returns:
          {iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl":
          float, "per_class": {category name: AP@[.5:.95]}}}. The 12 numbers are COCOeval.stats, -1 where
          pycocotools finds no gt (e.g. no large objects). A class's AP is NaN when it has no (non-crowd) gt in
          the evaluated images; categories are named by their ground-truth name ("name (id)" if names repeat).
        """
        if not self._image_ids:
            raise ValueError("CocoEvaluator.evaluate: no images were added")
        image_ids = sorted(self._image_ids)
        metrics = {}
        for iou_type in self.iou_types:
            results = self.results(iou_type)  # new dicts: loadRes and COCOeval add keys to them
            with _quiet(self.verbose):
                coco_dt = self.coco_gt.loadRes(results) if results else self._empty_results()
                coco_eval = COCOeval(self.coco_gt, coco_dt, iou_type)
                coco_eval.params.imgIds = image_ids
                # The model's categories only: a gt category the model does not predict would count as AP 0 in
                # every mean (MMDetection evaluates its classes, not the JSON's).
                coco_eval.params.catIds = sorted(self.category_ids)
                coco_eval.evaluate()
                coco_eval.accumulate()
                coco_eval.summarize()
            metrics[iou_type] = dict(zip(STAT_NAMES, (float(s) for s in coco_eval.stats)))
            metrics[iou_type]["per_class"] = self._per_class(coco_eval)
        return metrics

    def _empty_results(self):
        """A results COCO with no detections (loadRes refuses an empty list)."""
        gt = self.coco_gt.dataset
        return _coco_api({"images": gt["images"], "categories": gt["categories"], "annotations": []}, self.verbose)

    def _per_class(self, coco_eval):
        # precision: [iou thresholds, recall points, categories, area ranges, max dets]; area "all", maxDets 100.
        precision = coco_eval.eval["precision"]
        names = [self.coco_gt.cats[c]["name"] for c in coco_eval.params.catIds]
        repeated = {n for n in names if names.count(n) > 1}
        per_class = {}
        for k, (category_id, name) in enumerate(zip(coco_eval.params.catIds, names)):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            per_class[f"{name} ({category_id})" if name in repeated else name] = (
                float(np.mean(p)) if p.size else float("nan"))
        return per_class


def _repair_polygons(dataset):
    """pycocotools cannot rasterize a polygon of fewer than 3 points (nor `[]`): drop such polygons, and give an
    annotation left without any an empty mask. It still counts as an object to detect, as its box does."""
    images = {image["id"]: image for image in dataset["images"]}
    for ann in dataset["annotations"]:
        polygons = ann["segmentation"]
        if not isinstance(polygons, list):
            continue  # RLE
        kept = [p for p in polygons if len(p) >= 6]
        if kept:
            ann["segmentation"] = kept
        else:
            image = images[ann["image_id"]]
            ann["segmentation"] = encode_mask(np.zeros((image["height"], image["width"]), np.uint8))


def format_table(metrics):
    """The usual printout: pycocotools' 12 lines per iou type, then a per-class AP@[.5:.95] table."""
    lines = []
    for iou_type, values in metrics.items():
        lines.append(f"{iou_type}:")
        for name, (kind, label) in zip(STAT_NAMES, _STAT_LABELS):
            lines.append(f" {kind} {label} = {values[name]:0.3f}")
    iou_types = list(metrics)
    names = list(dict.fromkeys(n for t in iou_types for n in metrics[t]["per_class"]))
    width = max([len("category")] + [len(n) for n in names])
    lines.append("per-class AP @[ IoU=0.50:0.95 ]:")
    lines.append(f"  {'category':<{width}}" + "".join(f"  {t:>6}" for t in iou_types))
    for name in names:
        cells = []
        for t in iou_types:
            ap = metrics[t]["per_class"].get(name, float("nan"))
            cells.append(f"  {'-' if math.isnan(ap) else f'{ap:.3f}':>6}")
        lines.append(f"  {name:<{width}}" + "".join(cells))
    return "\n".join(lines)


def evaluate_model(predict_fn, dataset, evaluator, max_images=None, progress=True):
    """Runs `predict_fn` over evaluation batches, feeds the evaluator and returns `evaluator.evaluate()`.

    Args:
      predict_fn: a callable {"images": [B, H, W, 3], "image_size": int [B, 2]} → the model's output dict (see
        `CocoEvaluator.add_batch`); e.g. a tf.function around `model(inputs, training=False)`.
      dataset: iterable of (images, targets) evaluation batches (`build_dataset(config, "val", training=False)`);
        targets holds image_size, source_id, original_size and scale.
      evaluator: a CocoEvaluator (images already added stay; a repeated image is an error).
      max_images: stop after this many images (the rest of the last batch is dropped); None = the whole dataset.
      progress: print a progress line on stderr now and then, and a last one.
    """
    done, start, last_print = 0, time.time(), time.time()
    for images, targets in dataset:
        if max_images is not None and done >= max_images:
            break
        outputs = predict_fn({"images": images, "image_size": targets["image_size"]})
        outputs = {k: np.asarray(v) for k, v in outputs.items()}
        targets = {k: np.asarray(targets[k]) for k in ("source_id", "original_size", "scale")}
        take = len(targets["source_id"]) if max_images is None else min(len(targets["source_id"]),
                                                                       max_images - done)
        evaluator.add_batch({k: v[:take] if v.ndim else v for k, v in outputs.items()},
                            {k: v[:take] for k, v in targets.items()})
        done += take
        if progress and time.time() - last_print > 10:
            last_print = time.time()
            _report_progress(done, start)
        if max_images is not None and done >= max_images:
            break  # before the dataset decodes another batch
    if progress:
        _report_progress(done, start)
    return evaluator.evaluate()


def _report_progress(done, start):
    elapsed = time.time() - start
    sys.stderr.write(f"COCO evaluation: {done} images, {done / max(elapsed, 1e-9):.1f} images/s\n")
    sys.stderr.flush()
