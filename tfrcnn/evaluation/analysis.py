"""Error analysis of COCO detection results against a COCO ground truth, on the host (numpy and pycocotools).

What `analyze` writes in its output folder:
- per-class precision-recall curves at IoU 0.5 and 0.75 (`pr_curves.png`, `.csv`, `.json`);
- a confusion matrix over the classes and background (`confusion_matrix.png`, `.csv`), MMDetection's
  tools/analysis_tools/confusion_matrix.py rule;
- the TIDE error breakdown (Bolya et al., "TIDE: A General Toolbox for Identifying Object Detection Errors",
  ECCV 2020): the false positives and missed objects by type, and the AP each type costs (`errors.png`, `.csv`,
  `.json`);
- ground truth and predictions side by side on the images with the most errors (`worst/<stem>.png`);
- `summary.txt`: the headline numbers and the files written.

Matching follows pycocotools' COCOeval (area range "all", maxDets 100), reimplemented here so that each detection's
fate is known: per image and category, in score order, each detection takes the unmatched non-crowd gt of its
category with the highest IoU >= t; one that finds none but overlaps a crowd gt of its category at IoU >= t (crowd
IoU = intersection / detection area) is ignored, and crowd gts are never objects to find. AP and the TIDE breakdown
count only the 100 best-scoring detections of each image and category, as COCOeval does (a detector that keeps
100 per image never has more); the confusion matrix and the worst images take every detection above the score
threshold. The per-class AP is computed as COCOeval computes it: the precision curve made monotone, sampled at
COCO's 101 recall points, averaged.

Frames: result records and ground truth boxes are [x, y, w, h] in original-image pixels (COCO's), and so are the
drawings (`tfrcnn.visualize.draw_records`). Only numpy, pycocotools and PIL are
imported; matplotlib (`tfrcnn.evaluation.plots`) loads when `analyze` draws its charts.
"""
import contextlib
import csv
import io
import json
import math
import os

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tfrcnn.data.coco import load_coco

IOU_TYPES = ("bbox", "segm")
MAX_DETECTIONS = 100  # per image and category, COCOeval's largest maxDets
# COCOeval's recThrs, computed the same way: searchsorted against recalls such as 3/10 must see the same floats.
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
PR_IOU_THRESHOLDS = (0.5, 0.75)
# TIDE's defaults: a detection is on an object at IoU >= t_f, on background at IoU <= t_b.
TIDE_FOREGROUND_IOU = 0.5
TIDE_BACKGROUND_IOU = 0.1
ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Missed")
_CLS, _LOC, _BOTH, _DUPE, _BKG = range(5)  # codes of the false-positive types, indices into ERROR_TYPES
_NOT_AN_ERROR = -1


# ---------------------------------------------------------------------------------------------- inputs

def load_ground_truth(path):
    """A COCO instances file → a pycocotools COCO object (the file checked by `tfrcnn.data.coco.load_coco`, whose
    CocoFormatError names the file and the bad key)."""
    coco = COCO()
    coco.dataset = load_coco(path)
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


def load_results(path, coco_gt, iou_type="bbox"):
    """A COCO results JSON (what predict.py and `tfrcnn.inference.coco_results` write) → its list of records,
    checked by `check_results` against `coco_gt`; a ValueError names the file."""
    try:
        with open(path, "rb") as f:
            results = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a COCO results file: not JSON ({e})") from None
    check_results(results, coco_gt, iou_type, source=path)
    return results


def check_results(results, coco_gt, iou_type="bbox", source="results"):
    """Raises ValueError `<source>: ...` naming the first bad record and value: not a list of records, a record
    without image_id / category_id / score / bbox ("bbox") or segmentation ("segm"), an image_id or category_id
    that `coco_gt` does not have, a score or bbox that is not finite numbers ([x, y, w, h], w and h >= 0)."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    # A bad file is a ValueError, not a TypeError: the scripts report ValueErrors as one line.
    if not isinstance(results, list):
        raise ValueError(f"{source}: not a COCO results file: the top level is a "  # noqa: TRY004
                         f"{type(results).__name__}, not a list of detection records {{image_id, category_id, bbox, "
                         "score}")
    required = ("image_id", "category_id", "score", "bbox" if iou_type == "bbox" else "segmentation")
    for i, record in enumerate(results):
        if not isinstance(record, dict):
            raise ValueError(f"{source}: record {i} is a {type(record).__name__}, not an object")  # noqa: TRY004
        missing = [k for k in required if k not in record]
        if missing:
            raise ValueError(f"{source}: record {i} lacks {', '.join(repr(k) for k in missing)}"
                             + (" (segm needs masks: were the results written by a model without masks?)"
                                if "segmentation" in missing else ""))
        if not _is_key(record["image_id"], coco_gt.imgs):
            raise ValueError(f"{source}: record {i}: image_id {record['image_id']!r} is not an image of the ground "
                             "truth")
        if not _is_key(record["category_id"], coco_gt.cats):
            raise ValueError(f"{source}: record {i}: category_id {record['category_id']!r} is not a category of "
                             f"the ground truth (it has {_listing(sorted(coco_gt.cats))})")
    # Numbers are checked all at once; the loop below only runs to name the first bad record.
    scores = _as_floats([r["score"] for r in results], ())
    if scores is None or not np.isfinite(scores).all():
        i = next(i for i, r in enumerate(results) if _as_floats([r["score"]], ()) is None
                 or not np.isfinite(r["score"]))
        raise ValueError(f"{source}: record {i}: score {results[i]['score']!r} is not a finite number")
    with_box = [i for i, r in enumerate(results) if "bbox" in r] if iou_type == "segm" else range(len(results))
    boxes = _as_floats([results[i]["bbox"] for i in with_box], (4,))
    if boxes is None or not (np.isfinite(boxes).all() and (boxes[:, 2:] >= 0).all()):
        i = next(i for i in with_box if _as_floats([results[i]["bbox"]], (4,)) is None
                 or not (np.isfinite(results[i]["bbox"]).all() and min(results[i]["bbox"][2:]) >= 0))
        raise ValueError(f"{source}: record {i}: bbox {results[i]['bbox']!r} is not [x, y, width, height] (finite "
                         "numbers, width and height >= 0)")


def _is_key(value, table):
    """Whether `value` is an integer key of `table` (a float 3.0 or a string "3" is not an id)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value in table


def _as_floats(values, shape):
    """values → float64 [len(values), *shape], or None when they are not all numbers of that shape."""
    if not len(values):
        return np.zeros((0, *shape))
    try:
        array = np.asarray(values)
    except ValueError:  # ragged
        return None
    if array.dtype.kind not in "iuf" or array.shape != (len(values), *shape):
        return None
    return array.astype(np.float64)


def _listing(values, limit=12):
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _rle(coco_gt, image_id, segmentation):
    """A COCO segmentation (polygons, uncompressed or compressed RLE) → compressed RLE at the image's size.
    Polygons pycocotools cannot rasterize (fewer than 3 points) are dropped; none left is an empty mask."""
    image = coco_gt.imgs[image_id]
    height, width = image["height"], image["width"]
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return mask_utils.encode(np.zeros((height, width, 1), np.uint8, order="F"))[0]
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if list(segmentation["size"]) != [height, width]:
        raise ValueError(f"RLE size {segmentation['size']} differs from image {image_id}'s [{height}, {width}]")
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


# ---------------------------------------------------------------------------------------------- matching

def box_iou(det_boxes, gt_boxes, gt_crowd):
    """COCO's box IoU (pycocotools' bbIou): det_boxes [D, 4] and gt_boxes [G, 4] [x, y, w, h] pixels, gt_crowd bool
    [G] → float64 [D, G]; against a crowd gt the union is the detection's own area."""
    det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    dx1, dy1, dw, dh = det_boxes.T[:, :, None]
    gx1, gy1, gw, gh = gt_boxes.T[:, None, :]
    inter_w = np.minimum(dx1 + dw, gx1 + gw) - np.maximum(dx1, gx1)
    inter_h = np.minimum(dy1 + dh, gy1 + gh) - np.maximum(dy1, gy1)
    inter = np.where((inter_w > 0) & (inter_h > 0), inter_w * inter_h, 0.0)
    det_area = dw * dh
    union = np.where(np.asarray(gt_crowd, bool)[None, :], det_area, det_area + gw * gh - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


class Matching:
    """COCOeval's matching at one IoU threshold (see the module docstring).

    det_gt: int [N] the gt each detection matched (index into the EvaluationSet's gts), -1 for none.
    det_ignored: bool [N] unmatched detections on a crowd gt of their category: neither true nor false positives.

    Detections beyond COCOeval's 100 per image and category come last in their image and category, so they only
    take gts that the counted ones left: the counted detections' matches are COCOeval's.
    """

    def __init__(self, det_gt, det_ignored):
        self.det_gt, self.det_ignored = det_gt, det_ignored

    def found(self, dets, num_gts):
        """bool [num_gts]: the gts matched by one of the detections that the bool [N] mask `dets` selects."""
        found = np.zeros(num_gts, bool)
        found[self.det_gt[dets & (self.det_gt >= 0)]] = True
        return found


class EvaluationSet:
    """The detections and ground truth of the evaluated images as flat arrays, and their overlaps per image.

    Args:
      results: COCO result records (checked by `check_results`).
      coco_gt: pycocotools COCO of the ground truth. Its categories, sorted by id, are the classes 0..C-1.
      iou_type: "bbox" or "segm" (records need a `segmentation`, the ground truth polygons or RLE).
      image_ids: the evaluated images; None: every image of the ground truth (COCOeval's default). Records on
        other images are left out (as COCOeval's params.imgIds does); their gts are the only objects to find.
      source: names the results in error messages.
      category_ids: the categories to analyse (e.g. a model's data.category_ids, as `CocoEvaluator` evaluates them);
        gts of other categories are left out, detections of others are an error. None: the ground truth's.

    Attributes (N detections, M gt annotations, I images, C classes):
      category_ids int [C], class_names [C] (GT names, "name (id)" where names repeat), image_ids int [I].
      det_image, det_class int [N]; det_score float [N]; det_boxes float [N, 4] [x, y, w, h]; det_record int [N]
        (index into `results`); det_counted bool [N]: among the MAX_DETECTIONS best of its image and category, the
        detections COCOeval evaluates; det_rank int [N]: COCOeval's accumulation order (lower first: score
        descending, then image, then the order within the image). Detections are sorted by image, then by score
        descending (file order among equal scores).
      gt_image, gt_class int [M]; gt_crowd bool [M]; gt_boxes float [M, 4] [x, y, w, h]; gt_ann_id int [M].
      det_bounds, gt_bounds int [I + 1]: image i holds detections det_bounds[i]:det_bounds[i+1] (likewise gts).
      ious: [I] float64 [D_i, G_i] IoU of each image's detections with its gts (crowd gts: intersection over the
        detection's area).
    """

    def __init__(self, results, coco_gt, iou_type="bbox", image_ids=None, source="results", category_ids=None):
        check_results(results, coco_gt, iou_type, source)
        self.results, self.coco_gt, self.iou_type, self.source = results, coco_gt, iou_type, source
        self.category_ids = np.array(sorted(coco_gt.cats if category_ids is None else category_ids), np.int64)
        other = sorted({r["category_id"] for r in results} - set(self.category_ids.tolist()))
        if other:
            raise ValueError(f"{source}: detections of categories {_listing(other)}, which are not among the "
                             f"analysed category_ids {_listing(self.category_ids.tolist())}")
        names = [coco_gt.cats.get(c, {}).get("name", str(c)) for c in self.category_ids.tolist()]
        self.class_names = [f"{n} ({c})" if names.count(n) > 1 else n for n, c in zip(names, self.category_ids)]
        if image_ids is None:
            image_ids = sorted(coco_gt.imgs)
        else:
            image_ids = sorted({int(i) for i in image_ids})
            unknown = [i for i in image_ids if i not in coco_gt.imgs]
            if unknown:
                raise ValueError(f"image_ids {_listing(unknown)} are not images of the ground truth")
        self.image_ids = np.array(image_ids, np.int64)
        self._gather_ground_truth()
        self._gather_detections()
        self._compute_overlaps()
        self._matchings = {}

    @property
    def num_classes(self):
        return len(self.category_ids)

    def _gather_ground_truth(self):
        kept = set(self.category_ids.tolist())
        anns = [a for i in self.image_ids.tolist() for a in self.coco_gt.imgToAnns.get(i, [])
                if a["category_id"] in kept]
        self.gt_anns = anns
        self.gt_image = np.searchsorted(self.image_ids, np.array([a["image_id"] for a in anns], np.int64))
        self.gt_class = np.searchsorted(self.category_ids, np.array([a["category_id"] for a in anns], np.int64))
        self.gt_crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
        self.gt_boxes = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        self.gt_ann_id = np.array([a["id"] for a in anns], np.int64)
        self.gt_bounds = np.searchsorted(self.gt_image, np.arange(len(self.image_ids) + 1))
        if self.iou_type == "segm":
            missing = [a["id"] for a in anns if "segmentation" not in a]
            if missing:
                raise ValueError(f"iou_type 'segm': ground truth annotations {_listing(missing)} have no "
                                 "segmentation")
            self.gt_rles = []
            for a in anns:
                try:
                    self.gt_rles.append(_rle(self.coco_gt, a["image_id"], a["segmentation"]))
                except (TypeError, KeyError, ValueError) as e:
                    raise ValueError(f"ground truth annotation {a['id']}: its segmentation is not COCO polygons or "
                                     f"RLE ({e})") from None

    def _gather_detections(self):
        results = self.results
        image_id = np.array([r["image_id"] for r in results], np.int64)
        record = np.flatnonzero(np.isin(image_id, self.image_ids))
        image = np.searchsorted(self.image_ids, image_id[record])
        category = np.searchsorted(self.category_ids,
                                   np.array([results[k]["category_id"] for k in record.tolist()], np.int64))
        score = np.array([results[k]["score"] for k in record.tolist()], np.float64)

        # COCOeval evaluates the MAX_DETECTIONS best of each image and category (stable: file order breaks ties).
        order = np.lexsort((record, -score, category, image))
        starts = np.ones(len(order), bool)
        starts[1:] = (image[order][1:] != image[order][:-1]) | (category[order][1:] != category[order][:-1])
        group_start = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
        rank_in_group = np.empty(len(order), np.int64)
        rank_in_group[order] = np.arange(len(order)) - group_start
        # COCOeval accumulates each image's detections in score order, images in id order, then sorts them all
        # by score with a stable sort: ties go to the earlier image, then to the earlier detection.
        accumulation = np.lexsort((rank_in_group, image, -score))
        rank = np.empty(len(accumulation), np.int64)
        rank[accumulation] = np.arange(len(accumulation))

        by_image = np.lexsort((record, -score, image))  # each image's detections in greedy-matching order
        self.det_record, self.det_image, self.det_class = record[by_image], image[by_image], category[by_image]
        self.det_score, self.det_rank = score[by_image], rank[by_image]
        self.det_counted = rank_in_group[by_image] < MAX_DETECTIONS
        self.det_bounds = np.searchsorted(self.det_image, np.arange(len(self.image_ids) + 1))
        if self.iou_type == "segm":
            self.det_rles = []
            for k in self.det_record.tolist():
                try:
                    self.det_rles.append(_rle(self.coco_gt, results[k]["image_id"], results[k]["segmentation"]))
                except (TypeError, KeyError, ValueError) as e:
                    raise ValueError(f"{self.source}: record {k}: its segmentation is not COCO polygons or RLE "
                                     f"({e})") from None
            boxes = [mask_utils.toBbox(rle) for rle in self.det_rles]
            self.det_boxes = np.array(boxes, np.float64).reshape(-1, 4)
        else:
            self.det_rles = None
            self.det_boxes = np.array([results[k]["bbox"] for k in self.det_record.tolist()],
                                      np.float64).reshape(-1, 4)

    def _compute_overlaps(self):
        self.ious = []
        for i in range(len(self.image_ids)):
            dets = slice(self.det_bounds[i], self.det_bounds[i + 1])
            gts = slice(self.gt_bounds[i], self.gt_bounds[i + 1])
            num_dets, num_gts = dets.stop - dets.start, gts.stop - gts.start
            if not (num_dets and num_gts):
                self.ious.append(np.zeros((num_dets, num_gts)))
            elif self.iou_type == "segm":
                crowd = self.gt_crowd[gts].astype(np.uint8).tolist()
                self.ious.append(np.asarray(mask_utils.iou(self.det_rles[dets], self.gt_rles[gts], crowd),
                                            np.float64).reshape(num_dets, num_gts))
            else:
                self.ious.append(box_iou(self.det_boxes[dets], self.gt_boxes[gts], self.gt_crowd[gts]))

    def image_slices(self, i):
        """(detections, gts) of image i as slices into the det_* and gt_* arrays."""
        return slice(self.det_bounds[i], self.det_bounds[i + 1]), slice(self.gt_bounds[i], self.gt_bounds[i + 1])

    def num_gt(self):
        """int [C]: the non-crowd gts of each class (the objects to find)."""
        return np.bincount(self.gt_class[~self.gt_crowd], minlength=self.num_classes)

    def match(self, iou_thr):
        """COCOeval's greedy matching at `iou_thr` (cached) → Matching."""
        key = float(iou_thr)
        if key not in self._matchings:
            self._matchings[key] = self._match(key)
        return self._matchings[key]

    def _match(self, iou_thr):
        det_gt = np.full(len(self.det_score), -1, np.int64)
        det_ignored = np.zeros(len(self.det_score), bool)
        threshold = min(iou_thr, 1 - 1e-10)  # as COCOeval: an IoU of exactly 1 still matches at t = 1
        for i, iou in enumerate(self.ious):
            dets, gts = self.image_slices(i)
            if not iou.size:
                continue
            same_class = self.det_class[dets][:, None] == self.gt_class[gts][None, :]
            overlapping = same_class & (iou >= threshold)
            crowd = self.gt_crowd[gts]
            candidates = overlapping & ~crowd
            free = np.ones(len(crowd), bool)
            # Only detections with a candidate can match; they take their turn in score order.
            for d in np.flatnonzero(candidates.any(1)).tolist():
                available = candidates[d] & free
                if not available.any():
                    continue
                reversed_iou = np.where(available, iou[d], -1.0)[::-1]
                g = len(reversed_iou) - 1 - int(np.argmax(reversed_iou))  # COCOeval keeps the last of equal IoUs
                free[g] = False
                det_gt[dets.start + d] = gts.start + g
            det_ignored[dets] = (det_gt[dets] < 0) & (overlapping & crowd).any(1)
        return Matching(det_gt, det_ignored)


# ---------------------------------------------------------------------------------------------- precision-recall

def class_precisions(det_class, det_rank, det_true, num_gt):
    """COCOeval's interpolated precision per class.

    Args:
      det_class: int [K] class of each counted detection (ignored ones left out: they move no point of the curve).
      det_rank: int [K] accumulation order (lower first).
      det_true: bool [K] true positive or not.
      num_gt: int [C] objects to find per class.
    Returns:
      (precision float [C, 101] at RECALL_THRESHOLDS, 0 where the recall is never reached; ap float [C], the mean
      of the 101 samples). Rows of classes without objects are NaN (COCOeval leaves them out, -1).
    """
    num_classes = len(num_gt)
    precision = np.full((num_classes, len(RECALL_THRESHOLDS)), np.nan)
    order = np.lexsort((det_rank, det_class))
    det_class, det_true = np.asarray(det_class)[order], np.asarray(det_true, bool)[order]
    bounds = np.searchsorted(det_class, np.arange(num_classes + 1))
    for k in np.flatnonzero(np.asarray(num_gt) > 0).tolist():
        true = det_true[bounds[k]:bounds[k + 1]]
        true_sum = np.cumsum(true, dtype=np.float64)
        false_sum = np.cumsum(~true, dtype=np.float64)
        recall = true_sum / num_gt[k]
        # COCOeval's np.spacing(1) guards 0/0; kept so that the numbers agree bit for bit.
        curve = true_sum / (true_sum + false_sum + np.spacing(1))
        curve = np.maximum.accumulate(curve[::-1])[::-1]  # precision at recall r = the best at any recall >= r
        sampled = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
        reached = sampled < len(curve)
        precision[k] = 0.0
        precision[k, reached] = curve[sampled[reached]]
    return precision, precision.mean(axis=1)


def precision_recall(evaluation, iou_thr):
    """(precision float [C, 101], ap float [C]) of `evaluation` at one IoU threshold: our COCO-rule matching,
    COCOeval's interpolation (`class_precisions`)."""
    matching = evaluation.match(iou_thr)
    counted = evaluation.det_counted & ~matching.det_ignored
    return class_precisions(evaluation.det_class[counted], evaluation.det_rank[counted],
                            matching.det_gt[counted] >= 0, evaluation.num_gt())


def mean_ap(ap):
    """The mean over the classes that have an AP (NaN: no objects); NaN when none has."""
    ap = np.asarray(ap, np.float64)
    return float(ap[~np.isnan(ap)].mean()) if (~np.isnan(ap)).any() else float("nan")


# ---------------------------------------------------------------------------------------------- confusion matrix

def confusion_matrix(evaluation, score_thr=0.3, tp_iou_thr=0.5):
    """Counts of ground truth class against predicted class, MMDetection's tools/analysis_tools/confusion_matrix.py
    rule, with COCO's crowd gts left out.

    Only detections scoring >= score_thr count. For each of them, every non-crowd gt with IoU >= tp_iou_thr adds
    1 to cell [gt class, detection class]: the diagonal for the same class (that gt is then found), off the
    diagonal for another (a mislabel). A detection overlapping no gt so adds 1 to [background, detection class],
    unless it overlaps a crowd gt at crowd IoU >= tp_iou_thr (then it counts nowhere). Each non-crowd gt that no
    detection of its class found adds 1 to [gt class, background]. A detection on two gts counts twice, and two
    detections on one gt both count on the diagonal (it is not a one-to-one matching).

    Returns int64 [C + 1, C + 1]: rows the ground truth classes then "background", columns the predicted classes
    then "background"; cell [background, background] is 0.
    """
    num_classes = evaluation.num_classes
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    found = np.zeros(len(evaluation.gt_class), bool)
    for i, iou in enumerate(evaluation.ious):
        dets, gts = evaluation.image_slices(i)
        confident = np.flatnonzero(evaluation.det_score[dets] >= score_thr)
        if not confident.size:
            continue
        crowd = evaluation.gt_crowd[gts]
        hits = iou[confident][:, ~crowd] >= tp_iou_thr
        on_crowd = (iou[confident][:, crowd] >= tp_iou_thr).any(1)
        det_class = evaluation.det_class[dets][confident]
        gt_index = np.flatnonzero(~crowd) + gts.start
        gt_class = evaluation.gt_class[gt_index]
        det_hit, gt_hit = np.nonzero(hits)
        np.add.at(matrix, (gt_class[gt_hit], det_class[det_hit]), 1)
        same = gt_class[gt_hit] == det_class[det_hit]
        found[gt_index[gt_hit[same]]] = True
        background = ~hits.any(1) & ~on_crowd
        np.add.at(matrix, (num_classes, det_class[background]), 1)
    missed = ~evaluation.gt_crowd & ~found
    np.add.at(matrix, (evaluation.gt_class[missed], num_classes), 1)
    return matrix


# ---------------------------------------------------------------------------------------------- TIDE errors

def error_types(evaluation, foreground_iou=TIDE_FOREGROUND_IOU, background_iou=TIDE_BACKGROUND_IOU):
    """TIDE's error type of each false positive and the missed gts, after COCO-rule matching at foreground_iou.

    Each false positive (a counted detection that matched nothing and is not ignored on a crowd gt) gets exactly
    one type, tested in the order of TIDE's reference implementation (tidecv's TIDERun._eval_image), with IoU_same /
    IoU_other its largest IoU with a non-crowd gt of its own / another class (matched or not), IoU_any the larger:
      Loc   t_b <= IoU_same < t_f: the right class, badly placed;
      Cls   IoU_other >= t_f: well placed on an object of another class;
      Dupe  IoU_same >= t_f: well placed and classified, but its gt was taken by a higher-scoring detection;
      Bkg   IoU_any <= t_b: on background (every false positive of an image without objects);
      Both  anything else: on another class's object at t_b < IoU < t_f.
    A Cls or Loc error targets the gt of that largest IoU. Missed: the non-crowd gts that no counted detection
    matched and that no Cls or Loc error targets (fixing that error would find them).
    Unlike tidecv, detections ignored on crowd regions get no type: they count for nothing in AP either.

    Returns (det_type int [N]: an index into ERROR_TYPES, -1 for true positives, ignored and uncounted
    detections; det_target int [N]: the targeted gt of Cls and Loc errors, else -1; missed bool [M]).
    """
    matching = evaluation.match(foreground_iou)
    det_type = np.full(len(evaluation.det_score), _NOT_AN_ERROR, np.int64)
    det_target = np.full(len(evaluation.det_score), -1, np.int64)
    false_positive = evaluation.det_counted & (matching.det_gt < 0) & ~matching.det_ignored
    for i, iou in enumerate(evaluation.ious):
        dets, gts = evaluation.image_slices(i)
        rows = np.flatnonzero(false_positive[dets])
        if not rows.size:
            continue
        regular = np.flatnonzero(~evaluation.gt_crowd[gts])
        det_index = dets.start + rows
        if not regular.size:
            det_type[det_index] = _BKG
            continue
        gt_index = gts.start + regular
        overlap = iou[rows][:, regular]
        same = evaluation.det_class[det_index][:, None] == evaluation.gt_class[gt_index][None, :]
        same_iou, other_iou = np.where(same, overlap, 0.0), np.where(same, 0.0, overlap)
        best_same, best_other, best_any = same_iou.max(1), other_iou.max(1), overlap.max(1)
        loc = (best_same >= background_iou) & (best_same < foreground_iou)
        cls = ~loc & (best_other >= foreground_iou)
        dupe = ~loc & ~cls & (best_same >= foreground_iou)
        bkg = ~loc & ~cls & ~dupe & (best_any <= background_iou)
        det_type[det_index] = np.select([loc, cls, dupe, bkg], [_LOC, _CLS, _DUPE, _BKG], _BOTH)
        det_target[det_index] = np.where(loc, gt_index[same_iou.argmax(1)],
                                         np.where(cls, gt_index[other_iou.argmax(1)], -1))
    targeted = np.zeros(len(evaluation.gt_class), bool)
    targeted[det_target[det_target >= 0]] = True
    found = matching.found(evaluation.det_counted, len(evaluation.gt_class))
    missed = ~evaluation.gt_crowd & ~found & ~targeted
    return det_type, det_target, missed


def error_breakdown(evaluation, foreground_iou=TIDE_FOREGROUND_IOU, background_iou=TIDE_BACKGROUND_IOU):
    """TIDE's error counts and the AP each type costs (`error_types` for the types).

    An error type's dAP is the AP at IoU foreground_iou (mean over the classes with objects) with every error of
    that type fixed by TIDE's oracle, minus the AP as it is. Each type is fixed alone, on the detections' (score,
    true / false) points of the precision-recall curves, without matching again:
      Cls   the detection takes its target gt's class and becomes its true positive; if that gt was matched
            already, or a higher-scoring Cls error targets it too, the detection is suppressed instead;
      Loc   likewise in its own class (the box moved onto its target gt);
      Both, Dupe, Bkg   the detection is suppressed;
      Missed   the missed gts are taken out of the objects to find (a class left with none leaves the mean).
    (tidecv lets the Cls and Loc errors on one gt compete for it together; fixing each type alone, they do not.)

    Returns {"AP": the AP as it is, "types": {type: {"count": int, "dAP": float}} in ERROR_TYPES order,
    "foreground_iou", "background_iou"}.
    """
    det_type, det_target, missed = error_types(evaluation, foreground_iou, background_iou)
    matching = evaluation.match(foreground_iou)
    num_gt = evaluation.num_gt()
    counted = evaluation.det_counted & ~matching.det_ignored
    found = matching.found(evaluation.det_counted, len(evaluation.gt_class))
    base_ap = mean_ap(_fixed_ap(evaluation, matching, num_gt, keep=counted))
    types = {}
    for code, name in enumerate(ERROR_TYPES):
        keep = counted
        det_class = evaluation.det_class
        det_true = matching.det_gt >= 0
        fixed_num_gt = num_gt
        if name == "Missed":
            count = int(missed.sum())
            fixed_num_gt = num_gt - np.bincount(evaluation.gt_class[missed], minlength=evaluation.num_classes)
        else:
            errors = np.flatnonzero(det_type == code)
            count = len(errors)
            keep = keep.copy()
            keep[errors] = False
            if name in ("Cls", "Loc"):
                winners = _best_error_per_target(errors, det_target, evaluation.det_rank, found)
                keep[winners] = True
                det_true = det_true.copy()
                det_true[winners] = True
                det_class = det_class.copy()
                det_class[winners] = evaluation.gt_class[det_target[winners]]
        fixed = _fixed_ap(evaluation, matching, fixed_num_gt, keep, det_class, det_true)
        # A class left without objects (all missed) leaves the mean, as COCOeval leaves out classes without gt.
        fixed[(num_gt > 0) & (fixed_num_gt == 0)] = np.nan
        types[name] = {"count": count, "dAP": mean_ap(fixed) - base_ap if count else 0.0}
    return {"AP": base_ap, "types": types, "foreground_iou": foreground_iou, "background_iou": background_iou}


def _best_error_per_target(errors, det_target, det_rank, gt_found):
    """Of the errors whose target gt no detection matched (bool [M] gt_found), the first in accumulation order of
    each target: the one that becomes the true positive (TIDE fixes one error per gt and suppresses the rest)."""
    open_errors = errors[~gt_found[det_target[errors]]]
    ordered = open_errors[np.lexsort((det_rank[open_errors], det_target[open_errors]))]
    _, first = np.unique(det_target[ordered], return_index=True)
    return ordered[first]


def _fixed_ap(evaluation, matching, num_gt, keep, det_class=None, det_true=None):
    det_class = evaluation.det_class if det_class is None else det_class
    det_true = matching.det_gt >= 0 if det_true is None else det_true
    _, ap = class_precisions(det_class[keep], evaluation.det_rank[keep], det_true[keep], num_gt)
    return ap


# ---------------------------------------------------------------------------------------------- worst images

def image_errors(evaluation, score_thr=0.3, tp_iou_thr=0.5):
    """Per image (false positives int [I], missed int [I]) at score >= score_thr: COCO-rule matching at tp_iou_thr
    (greedy in score order, so the matches of the confident detections do not depend on the others); a false
    positive is a confident detection that matched nothing and is not on a crowd gt, a missed gt one that no
    confident detection matched."""
    matching = evaluation.match(tp_iou_thr)
    confident = evaluation.det_score >= score_thr
    false_positive = confident & (matching.det_gt < 0) & ~matching.det_ignored
    missed = ~evaluation.gt_crowd & ~matching.found(confident, len(evaluation.gt_class))
    num_images = len(evaluation.image_ids)
    return (np.bincount(evaluation.det_image[false_positive], minlength=num_images),
            np.bincount(evaluation.gt_image[missed], minlength=num_images))


def worst_images(evaluation, num_worst=8, score_thr=0.3, tp_iou_thr=0.5):
    """The `num_worst` images with the most errors (false positives + missed, `image_errors`), most first, ties in
    image id order; images without errors are not listed. Returns [{"image_id", "file_name", "false_positives",
    "missed"}]."""
    false_positives, missed = image_errors(evaluation, score_thr, tp_iou_thr)
    total = false_positives + missed
    order = np.argsort(-total, kind="stable")[:num_worst]
    return [{"image_id": int(evaluation.image_ids[i]),
             "file_name": evaluation.coco_gt.imgs[int(evaluation.image_ids[i])]["file_name"],
             "false_positives": int(false_positives[i]), "missed": int(missed[i])}
            for i in order.tolist() if total[i] > 0]


def draw_comparison(evaluation, image_id, image, score_thr=0.3, errors=None):
    """Ground truth (left) and the detections scoring >= score_thr (right) drawn on one image with
    `tfrcnn.visualize.draw_records`, a caption above each.

    image: uint8 [H, W, 3] RGB of the ground truth's size. errors: None, or (false positives, missed) to caption
    the predictions with. Returns uint8 [H + caption, 2 W + gap, 3].
    """
    from PIL import Image, ImageDraw

    from tfrcnn.visualize import draw_records

    i = int(np.searchsorted(evaluation.image_ids, image_id))
    dets, gts = evaluation.image_slices(i)
    class_names = {int(c): n for c, n in zip(evaluation.category_ids, evaluation.class_names)}
    truth = draw_records(image, evaluation.gt_anns[gts], class_names)
    # Only the detections drawn are decoded: an image may hold a hundred full-size masks below the threshold.
    shown = dets.start + np.flatnonzero(evaluation.det_score[dets] >= score_thr)
    predicted = draw_records(image, [evaluation.results[k] for k in evaluation.det_record[shown].tolist()],
                             class_names, score_thr)

    height, width = image.shape[:2]
    caption, gap = 18, 8
    canvas = Image.new("RGB", (2 * width + gap, height + caption), (255, 255, 255))
    canvas.paste(Image.fromarray(truth), (0, caption))
    canvas.paste(Image.fromarray(predicted), (width + gap, caption))
    draw = ImageDraw.Draw(canvas)
    num_regular = int((~evaluation.gt_crowd[gts]).sum())
    draw.text((2, 3), f"ground truth: {num_regular} objects", fill=(0, 0, 0))
    counts = "" if errors is None else f" ({errors[0]} false positives, {errors[1]} missed)"
    draw.text((width + gap + 2, 3), f"predictions >= {score_thr:g}: {len(shown)}{counts}", fill=(0, 0, 0))
    return np.asarray(canvas, np.uint8)


def images_in_folder(coco_gt, image_dir):
    """A `read_images` for `analyze`: image ids → {id: uint8 [H, W, 3]} read from `image_dir`/<file_name>; a missing
    file is a FileNotFoundError, an image of another size than the ground truth says a ValueError."""
    from PIL import Image

    def read(image_ids):
        images = {}
        for image_id in image_ids:
            info = coco_gt.imgs[image_id]
            path = os.path.join(image_dir, info["file_name"])
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no such image (is the image folder the one of the ground truth's "
                                        "file_names?)")
            with Image.open(path) as picture:
                images[image_id] = np.asarray(picture.convert("RGB"))
            if images[image_id].shape[:2] != (info["height"], info["width"]):
                raise ValueError(f"{path} is {images[image_id].shape[0]}x{images[image_id].shape[1]} but the ground "
                                 f"truth says {info['height']}x{info['width']}")
        return images
    return read


# ---------------------------------------------------------------------------------------------- the report

def analyze(results, coco_gt, output_dir, read_images=None, score_thr=0.3, tp_iou_thr=0.5, num_worst=8,
            iou_type="bbox", image_ids=None, category_ids=None):
    """Writes the whole error analysis of `results` into `output_dir` (created if needed).

    Args:
      results: COCO result records {image_id, category_id, bbox [x, y, w, h] original pixels, score, optional
        segmentation RLE}, e.g. predict.py's detections.json or `CocoEvaluator.results("bbox")`. [] is valid.
      coco_gt: pycocotools COCO of the ground truth (`load_ground_truth`).
      read_images: image ids → {id: uint8 [H, W, 3]} at the ground truth's sizes (`images_in_folder`, or
        `tfrcnn.data.pipeline.read_images` for a split's TFRecords); None: the worst images are listed, not drawn.
      score_thr: detections below it are left out of the confusion matrix and the worst-image counts (the PR
        curves and the TIDE breakdown take every detection, as AP does).
      tp_iou_thr: IoU at which a detection hits a gt in the confusion matrix and the worst-image counts.
      num_worst: how many of the images with the most errors to draw.
      iou_type: "bbox", or "segm" to match masks (every record needs a segmentation).
      image_ids: the evaluated images (e.g. `CocoEvaluator.image_ids` after a --max_images run); None: all images
        of the ground truth. Gts of images left out do not count as missed.
      category_ids: the categories analysed (`EvaluationSet`); None: the ground truth's.
    Files: pr_curves.png/.csv/.json, confusion_matrix.png/.csv, errors.png/.csv/.json, worst/<stem>.png (with
      read_images), summary.txt.
    Returns {"AP50", "AP75", "per_class": {name: {"num_gt", "AP50", "AP75"}}, "confusion_matrix": [[int]],
      "errors": `error_breakdown`'s dict, "worst_images": `worst_images`' list, "files": [paths], "summary": the
      text of summary.txt}.
    """
    from tfrcnn.evaluation import plots

    evaluation = EvaluationSet(results, coco_gt, iou_type, image_ids, category_ids=category_ids)
    os.makedirs(output_dir, exist_ok=True)
    files = []

    def output(name):
        path = os.path.join(output_dir, name)
        files.append(path)
        return path

    curves = {t: precision_recall(evaluation, t) for t in PR_IOU_THRESHOLDS}
    num_gt = evaluation.num_gt()
    per_class = {name: {"num_gt": int(num_gt[k]),
                        **{f"AP{round(t * 100)}": _number(curves[t][1][k]) for t in PR_IOU_THRESHOLDS}}
                 for k, name in enumerate(evaluation.class_names)}
    _write_pr_curves(evaluation, curves, output("pr_curves.csv"), output("pr_curves.json"))
    plots.plot_pr_curves(output("pr_curves.png"), evaluation.class_names, RECALL_THRESHOLDS,
                         {t: precision for t, (precision, _) in curves.items()},
                         {t: ap for t, (_, ap) in curves.items()})

    matrix = confusion_matrix(evaluation, score_thr, tp_iou_thr)
    labels = evaluation.class_names + ["background"]
    _write_csv(output("confusion_matrix.csv"), ["ground truth \\ predicted"] + labels,
               [[label] + row for label, row in zip(labels, matrix.tolist())])
    plots.plot_confusion_matrix(output("confusion_matrix.png"), matrix, labels,
                                f"score >= {score_thr:g}, IoU >= {tp_iou_thr:g}")

    errors = error_breakdown(evaluation)
    with open(output("errors.json"), "w") as f:
        json.dump({"iou_type": iou_type, "source": "TIDE (Bolya et al., ECCV 2020)",
                   "foreground_iou": errors["foreground_iou"], "background_iou": errors["background_iou"],
                   "AP": _number(errors["AP"]),
                   "types": {name: {"count": v["count"], "dAP": _number(v["dAP"])}
                             for name, v in errors["types"].items()}}, f, indent=1)
    _write_csv(output("errors.csv"), ["type", "count", "dAP"],
               [[name, v["count"], f"{v['dAP']:.6f}"] for name, v in errors["types"].items()])
    plots.plot_errors(output("errors.png"), list(errors["types"]), [v["count"] for v in errors["types"].values()],
                      [v["dAP"] for v in errors["types"].values()], errors["AP"], errors["foreground_iou"])

    worst = worst_images(evaluation, num_worst, score_thr, tp_iou_thr)
    if read_images is not None and worst:
        from PIL import Image

        os.makedirs(os.path.join(output_dir, "worst"), exist_ok=True)
        images = read_images([entry["image_id"] for entry in worst])
        for entry in worst:
            stem = os.path.splitext(os.path.basename(coco_gt.imgs[entry["image_id"]]["file_name"]))[0]
            drawing = draw_comparison(evaluation, entry["image_id"], images[entry["image_id"]], score_thr,
                                      (entry["false_positives"], entry["missed"]))
            Image.fromarray(drawing).save(output(os.path.join("worst", stem + ".png")))

    report = {"AP50": mean_ap(curves[0.5][1]), "AP75": mean_ap(curves[0.75][1]), "per_class": per_class,
              "confusion_matrix": matrix.tolist(), "errors": errors, "worst_images": worst}
    summary_path = output("summary.txt")
    report["files"] = files
    report["summary"] = format_summary(report, evaluation, score_thr, tp_iou_thr, iou_type)
    with open(summary_path, "w") as f:
        f.write(report["summary"] + "\n")
    return report


def _number(value):
    """NaN → None, so that the JSON stays standard."""
    return None if value is None or math.isnan(value) else float(value)


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _write_pr_curves(evaluation, curves, csv_path, json_path):
    """pr_curves.csv: one row per class, IoU threshold and recall point (category_id, category, iou_thr, ap,
    recall, precision; classes without objects left out). pr_curves.json: the same as arrays per class."""
    rows, classes = [], []
    for k, (category_id, name) in enumerate(zip(evaluation.category_ids.tolist(), evaluation.class_names)):
        entry = {"category_id": category_id, "name": name, "num_gt": int(evaluation.num_gt()[k]), "ap": {},
                 "precision": {}}
        for t, (precision, ap) in curves.items():
            entry["ap"][str(t)] = _number(ap[k])
            entry["precision"][str(t)] = None if np.isnan(ap[k]) else precision[k].tolist()
            if not np.isnan(ap[k]):
                rows += [[category_id, name, t, f"{ap[k]:.6f}", f"{r:.2f}", f"{p:.6f}"]
                         for r, p in zip(RECALL_THRESHOLDS.tolist(), precision[k].tolist())]
        classes.append(entry)
    _write_csv(csv_path, ["category_id", "category", "iou_thr", "ap", "recall", "precision"], rows)
    with open(json_path, "w") as f:
        json.dump({"recall": RECALL_THRESHOLDS.tolist(), "iou_thresholds": list(curves), "classes": classes}, f)


def format_summary(report, evaluation, score_thr, tp_iou_thr, iou_type):
    """The text of summary.txt: what was analysed, the headline numbers, the files written."""
    num_objects = int(evaluation.num_gt().sum())
    lines = [(f"{len(evaluation.det_score)} detections ({iou_type}) on {len(evaluation.image_ids)} images; "
              f"ground truth: {num_objects} objects of {evaluation.num_classes} categories"),
             (f"AP50 {_format(report['AP50'])}  AP75 {_format(report['AP75'])}  (COCO rules, mean over the "
              "categories with objects)")]
    width = max([len("category")] + [len(n) for n in report["per_class"]])
    lines.append(f"  {'category':<{width}}  {'objects':>7}  {'AP50':>6}  {'AP75':>6}")
    for name, values in report["per_class"].items():
        lines.append(f"  {name:<{width}}  {values['num_gt']:>7}  {_format(values['AP50']):>6}  "
                     f"{_format(values['AP75']):>6}")
    errors = report["errors"]
    lines.append(f"TIDE errors at IoU {errors['foreground_iou']:g} (background <= {errors['background_iou']:g}): "
                 "count, dAP (AP gained by fixing that type alone)")
    lines += [f"  {name:<6}  {v['count']:>7}  {v['dAP']:+.4f}" for name, v in errors["types"].items()]
    matrix = np.asarray(report["confusion_matrix"])
    diagonal = int(np.trace(matrix[:-1, :-1]))
    lines.append(f"confusion matrix at score >= {score_thr:g}, IoU >= {tp_iou_thr:g}: {diagonal} hits of the right "
                 f"class, {int(matrix[:-1, :-1].sum()) - diagonal} of another class, {int(matrix[-1].sum())} on "
                 f"background, {int(matrix[:-1, -1].sum())} objects missed")
    lines.append(f"images with the most errors (false positives + missed at score >= {score_thr:g}):")
    lines += [f"  {w['file_name']}: {w['false_positives']} false positives, {w['missed']} missed"
              for w in report["worst_images"]] or ["  none"]
    lines.append("files written:")
    lines += [f"  {path}" for path in report["files"]]
    return "\n".join(lines)


def _format(value):
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"
