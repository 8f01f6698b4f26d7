import contextlib
import io
import json
import math

import numpy as np
import pytest
import tensorflow as tf
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.models.detection.roi_heads import paste_masks_in_image

from tfrcnn.evaluation.coco_evaluator import CocoEvaluator, evaluate_model, format_table
from tfrcnn.ops.masks import paste_masks

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# Sparse category ids; "star" has no gt at all.
CATEGORIES = [{"id": 3, "name": "circle"}, {"id": 17, "name": "square"}, {"id": 42, "name": "triangle"},
              {"id": 50, "name": "star"}]
CLASS_OF = {3: 1, 17: 2, 42: 3, 50: 4}  # model class of each category with the default (sorted) category_ids


# ---------------------------------------------------------------------------------------------- COCO fixtures

def disk(height, width, cy, cx, r):
    y, x = np.mgrid[:height, :width]
    return ((y - cy) ** 2 + (x - cx) ** 2 <= r * r).astype(np.uint8)


def uncompressed_rle(mask):
    """A 0/1 mask → COCO's uncompressed RLE: run lengths in column-major order, starting with a run of zeros."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def compressed_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def annotation(ann_id, image, category_id, segmentation, iscrowd=0):
    """A COCO annotation whose area and bbox come from its rasterized segmentation."""
    h, w = image["height"], image["width"]
    if isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, h, w)
    else:
        rle = dict(segmentation, counts=segmentation["counts"].encode("ascii"))
    return {"id": ann_id, "image_id": image["id"], "category_id": category_id, "segmentation": segmentation,
            "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": iscrowd}


def image_entry(image_id, height, width):
    return {"id": image_id, "file_name": f"{image_id}.jpg", "height": height, "width": width}


def shapes_coco():
    """Four images: polygons, a multi-polygon, uncompressed and compressed RLE, a crowd RLE, an image without
    annotations; small, medium and large objects; sparse category ids 3, 17, 42 (and 50 without gt)."""
    i11, i22, i33, i44 = image_entry(11, 64, 64), image_entry(22, 64, 64), image_entry(33, 64, 64), \
        image_entry(44, 128, 128)
    crowd = np.zeros((64, 64), np.uint8)
    crowd[30:60, 36:60] = 1
    annotations = [
        annotation(1, i11, 17, [[8, 8, 30, 8, 30, 24, 8, 24]]),  # 22 × 16 polygon: small
        annotation(2, i11, 42, [[40, 10, 60, 40, 36, 44]]),  # triangle
        annotation(3, i11, 3, uncompressed_rle(disk(64, 64, 50, 16, 7))),
        annotation(4, i22, 3, [[4, 4, 14, 4, 14, 14, 4, 14], [20, 4, 28, 4, 28, 12]]),  # multi-polygon
        annotation(5, i22, 17, compressed_rle(crowd), iscrowd=1),
        annotation(6, i22, 42, [[2, 20, 60, 24, 14, 62]]),  # medium triangle
        annotation(7, i44, 3, uncompressed_rle(disk(128, 128, 64, 64, 60))),  # large
        annotation(8, i44, 17, compressed_rle(np.pad(np.ones((9, 13), np.uint8), ((100, 19), (4, 111))))),
    ]
    areas = [a["area"] for a in annotations if not a["iscrowd"]]
    assert min(areas) < 32 ** 2 and any(32 ** 2 < a < 96 ** 2 for a in areas) and max(areas) > 96 ** 2
    return {"images": [i11, i22, i33, i44], "annotations": annotations, "categories": CATEGORIES}


def rectangles_coco():
    """Rectangles with integer corners (polygons and RLE), on images of several shapes: a box-frame mask of ones
    pasted into such a box gives back exactly its pixels."""
    i5, i7, i9 = image_entry(5, 64, 64), image_entry(7, 48, 80), image_entry(9, 80, 48)
    rle_rect = np.zeros((80, 48), np.uint8)
    rle_rect[40:75, 6:30] = 1
    annotations = [
        annotation(1, i5, 17, [[8, 8, 30, 8, 30, 24, 8, 24]]),
        annotation(2, i5, 3, [[33, 30, 60, 30, 60, 62, 33, 62]]),
        annotation(3, i7, 42, [[50, 2, 79, 2, 79, 46, 50, 46]]),
        annotation(4, i7, 3, [[0, 0, 12, 0, 12, 7, 0, 7]]),
        annotation(5, i9, 17, compressed_rle(rle_rect)),
    ]
    categories = [c for c in CATEGORIES if c["id"] != 50]
    return {"images": [i5, i7, i9], "annotations": annotations, "categories": categories}


@pytest.fixture
def shapes_json(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(shapes_coco()))
    return str(path)


def quiet_coco(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def gt_detections(coco, image_id, class_of=CLASS_OF):
    """The non-crowd gt of an image as detections: boxes [y1, x1, y2, x2], scores 1, model classes, in-image
    masks."""
    anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
    boxes = np.array([[y, x, y + h, x + w] for x, y, w, h in (a["bbox"] for a in anns)], np.float32).reshape(-1, 4)
    classes = np.array([class_of[a["category_id"]] for a in anns], np.int32)
    img = coco.imgs[image_id]
    masks = np.array([coco.annToMask(a) for a in anns], np.uint8).reshape(-1, img["height"], img["width"])
    return boxes, np.ones(len(anns), np.float32), classes, masks


# ---------------------------------------------------------------------------------------------- 1: gt as detections

def one(n=None):
    """A perfect score as pycocotools computes it: its precision tp / (tp + fp + 2.2e-16) is 1 - 2.2e-16 for a
    single true positive, so an AP of 1 may read 0.9999999999999998."""
    return pytest.approx(1.0 if n is None else [1.0] * n, abs=1e-12, rel=0)


def test_ground_truth_as_detections_scores_one(shapes_json):
    coco = quiet_coco(shapes_json)
    evaluator = CocoEvaluator(shapes_json)
    for image_id in (11, 22, 33, 44):  # 33 has no annotations: an empty set of detections
        boxes, scores, classes, masks = gt_detections(coco, image_id)
        evaluator.add_detections(image_id, boxes, scores, classes, masks, masks_in_image=True)
    metrics = evaluator.evaluate()
    for iou_type in ("bbox", "segm"):
        # The fixture has small, medium and large gt and at most one non-crowd gt per image and category, so every
        # number (AR1 included) is 1. The crowd region gets no detection and costs nothing.
        assert [metrics[iou_type][name] for name in STATS] == one(12)
        per_class = metrics[iou_type]["per_class"]
        assert [per_class[k] for k in ("circle", "square", "triangle")] == one(3)
        assert math.isnan(per_class["star"])  # no gt: NaN, not 0
    table = format_table(metrics)
    assert "(AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in table
    assert "star" in table and "triangle" in table


def test_ground_truth_box_frame_masks_through_add_batch(tmp_path):
    # Rectangles with integer corners: the mmdet paste samples the mask at pixel centres Y + 0.5, so a 28 × 28
    # mask of ones over box [y1, y2) covers exactly rows y1 .. y2 - 1 (at y1 - 0.5 the sample sits a full mask
    # pixel outside; at y1 + 0.5 it is inside), i.e. the gt's own pixels.
    data = rectangles_coco()
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    evaluator = CocoEvaluator(data)  # a dict this time
    scale = np.float32(2.0)  # resized = 2 × original; padded input 176 × 176
    for image_id in (5, 7, 9):
        boxes, scores, classes, _ = gt_detections(coco, image_id)
        k = len(boxes)
        img = coco.imgs[image_id]
        outputs = {
            "detection_boxes": tf.constant(np.pad(boxes * scale, ((0, 1), (0, 0)))[None]),
            "detection_scores": tf.constant(np.pad(scores, (0, 1))[None]),
            "detection_classes": tf.constant(np.pad(classes, (0, 1))[None]),
            "num_detections": tf.constant([k], tf.int32),
            "detection_masks": tf.ones([1, k + 1, 28, 28]),
        }
        targets = {"source_id": tf.constant([str(image_id).encode()]),
                   "original_size": tf.constant([[img["height"], img["width"]]], tf.int32),
                   "scale": tf.constant([[scale, scale]], tf.float32)}
        evaluator.add_batch(outputs, targets)
    metrics = evaluator.evaluate()
    assert [metrics[t][name] for t in ("bbox", "segm") for name in ("AP", "AP75", "AR100")] == one(6)
    # Each pasted mask is the gt mask itself.
    for result in evaluator.results("segm"):
        gt = [a for a in coco.imgToAnns[result["image_id"]] if a["category_id"] == result["category_id"]][0]
        np.testing.assert_array_equal(mask_utils.decode(result["segmentation"]), coco.annToMask(gt))


# ---------------------------------------------------------------------------------------------- 2: vs pycocotools

def dilate(mask):
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def erode(mask):
    return 1 - dilate(1 - mask)


def perturbed_detections(coco, rng):
    """Per image: jittered gt boxes with random scores, some wrong classes, some missed, a duplicate, dilated or
    eroded masks, and a few false positives (random boxes and blobs)."""
    detections = {}
    for image_id, img in coco.imgs.items():
        h, w = img["height"], img["width"]
        boxes, scores, classes, masks = [], [], [], []
        for ann in coco.imgToAnns[image_id]:
            if ann["iscrowd"] or rng.uniform() < 0.15:
                continue
            x, y, bw, bh = ann["bbox"]
            for copy_index in range(1 + (rng.uniform() < 0.3)):  # sometimes a duplicate
                boxes.append(np.array([y, x, y + bh, x + bw]) + rng.normal(0, 1.5, 4))
                scores.append(rng.uniform(0.05, 1.0))
                wrong = rng.uniform() < 0.2
                classes.append(rng.integers(1, 5) if wrong else CLASS_OF[ann["category_id"]])
                mask = coco.annToMask(ann)
                masks.append([dilate, erode, lambda m: m][rng.integers(3)](mask))
        for _ in range(rng.integers(1, 4)):
            y1, x1 = rng.uniform(0, h - 8), rng.uniform(0, w - 8)
            y2, x2 = rng.uniform(y1 + 2, h), rng.uniform(x1 + 2, w)
            boxes.append(np.array([y1, x1, y2, x2]))
            scores.append(rng.uniform(0.05, 1.0))
            classes.append(rng.integers(1, 5))
            masks.append(disk(h, w, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 15)))
        detections[image_id] = (np.array(boxes, np.float32), np.array(scores, np.float32),
                                np.array(classes, np.int32), np.array(masks, np.uint8))
    return detections


def reference_metrics(json_path, detections, image_ids=None):
    """pycocotools on its own: results written out in the test, COCO/loadRes/COCOeval called directly."""
    category_of = {c: k for k, c in CLASS_OF.items()}
    bbox_results, segm_results = [], []
    for image_id, (boxes, scores, classes, masks) in detections.items():
        for (y1, x1, y2, x2), score, cls, mask in zip(boxes.tolist(), scores.tolist(), classes.tolist(), masks):
            bbox_results.append({"image_id": image_id, "category_id": category_of[cls],
                                 "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
            # Without a "bbox" key, as the evaluator documents: loadRes then takes the mask area for the area
            # ranges (with one, it would take the box's area).
            segm_results.append({"image_id": image_id, "category_id": category_of[cls],
                                 "segmentation": mask_utils.encode(np.asfortranarray(mask)), "score": score})
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_path)
        for iou_type, results in (("bbox", bbox_results), ("segm", segm_results)):
            coco_eval = COCOeval(gt, gt.loadRes(results), iou_type)
            if image_ids is not None:
                coco_eval.params.imgIds = image_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
            precision = coco_eval.eval["precision"]
            per_class = {}
            for k, category_id in enumerate(coco_eval.params.catIds):
                values = precision[:, :, k, 0, 2].ravel()  # area "all", maxDets 100
                values = values[values != -1]
                per_class[gt.cats[category_id]["name"]] = values.mean() if len(values) else float("nan")
            out[iou_type] = (list(coco_eval.stats), per_class)
    return out


def test_perturbed_detections_match_pycocotools(shapes_json):
    rng = np.random.default_rng(7)
    coco = quiet_coco(shapes_json)
    detections = perturbed_detections(coco, rng)
    evaluator = CocoEvaluator(shapes_json)
    for image_id, (boxes, scores, classes, masks) in detections.items():
        evaluator.add_detections(image_id, boxes, scores, classes, masks, masks_in_image=True)
    metrics = evaluator.evaluate()
    reference = reference_metrics(shapes_json, detections)
    for iou_type in ("bbox", "segm"):
        stats, per_class = reference[iou_type]
        assert [metrics[iou_type][name] for name in STATS] == pytest.approx(stats, abs=1e-12, rel=0)
        assert 0.1 < stats[0] < 0.95 and min(stats) > -1  # a non-trivial score, every area range populated
        assert set(metrics[iou_type]["per_class"]) == set(per_class)
        for name, ap in per_class.items():
            got = metrics[iou_type]["per_class"][name]
            assert (math.isnan(ap) and math.isnan(got)) or got == pytest.approx(ap, abs=1e-12, rel=0), name
    assert metrics["bbox"]["AP"] != metrics["segm"]["AP"]


# ---------------------------------------------------------------------------------------------- 3: details

def test_category_id_mapping(shapes_json):
    coco = quiet_coco(shapes_json)
    # Model classes 1, 2, 3 are categories 42, 17, 3: model class 2 → category 17 ("square").
    class_of = {42: 1, 17: 2, 3: 3}
    evaluator = CocoEvaluator(shapes_json, iou_types=("bbox",), category_ids=[42, 17, 3])
    for image_id in (11, 22, 33, 44):
        boxes, scores, classes, _ = gt_detections(coco, image_id, class_of)
        evaluator.add_detections(image_id, boxes, scores, classes)
    first = evaluator.results("bbox")[0]
    assert (first["image_id"], first["category_id"]) == (11, 17)  # annotation 1, a square, sent as class 2
    metrics = evaluator.evaluate()
    assert metrics["bbox"]["AP"] == one()
    assert "segm" not in metrics
    with pytest.raises(ValueError, match="model class 4"):
        CocoEvaluator(shapes_json, iou_types=("bbox",), category_ids=[42, 17, 3]).add_detections(
            11, [[0, 0, 5, 5]], [0.9], [4])
    # A category the ground truth lacks (gt from TFRecords without any such object) gets a warning, an AP of NaN,
    # and changes no number: its detections match nothing, but COCOeval leaves a category without gt out.
    coco_detections = {i: gt_detections(coco, i) for i in (11, 22, 33, 44)}
    with pytest.warns(UserWarning, match=r"\[99\]"):
        evaluator = CocoEvaluator(shapes_json, iou_types=("bbox",), category_ids=[3, 17, 42, 50, 99])
    for image_id, (boxes, scores, classes, _) in coco_detections.items():
        evaluator.add_detections(image_id, np.concatenate([boxes, [[1, 1, 30, 30]]]),
                                 np.append(scores, 0.99), np.append(classes, 5))
    metrics = evaluator.evaluate()["bbox"]
    assert metrics["AP"] == one() and math.isnan(metrics["per_class"]["99"])


def test_evaluation_covers_the_model_categories_only(shapes_json):
    # The model knows circles (3) and squares (17); the gt also has triangles (42). Perfect detections of its two
    # categories score 1, as MMDetection's evaluation of its classes does; over the JSON's categories the
    # triangles, which the model cannot predict, would pull every mean down.
    coco = quiet_coco(shapes_json)
    class_of = {3: 1, 17: 2, 42: 0}  # 0: not a model class, dropped below
    evaluator = CocoEvaluator(shapes_json, category_ids=[3, 17])
    for image_id in (11, 22, 33, 44):
        boxes, scores, classes, masks = gt_detections(coco, image_id, class_of)
        keep = classes > 0
        evaluator.add_detections(image_id, boxes[keep], scores[keep], classes[keep], masks[keep], masks_in_image=True)
    metrics = evaluator.evaluate()
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == one()
        assert set(metrics[iou_type]["per_class"]) == {"circle", "square"}
    everything = COCOeval(coco, coco.loadRes(evaluator.results("bbox")), "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        everything.evaluate(), everything.accumulate(), everything.summarize()
    assert everything.stats[0] < 0.7  # over circle, square and triangle


def test_only_added_images_count(shapes_json):
    # Perfect detections on images 11 and 22 only (a `--max_images 2` run): the gt of image 44 must not count as
    # missed. pycocotools restricted to those images agrees exactly; unrestricted it would report less.
    coco = quiet_coco(shapes_json)
    detections = {i: gt_detections(coco, i) for i in (11, 22)}
    evaluator = CocoEvaluator(shapes_json)
    for image_id, (boxes, scores, classes, masks) in detections.items():
        evaluator.add_detections(image_id, boxes, scores, classes, masks, masks_in_image=True)
    metrics = evaluator.evaluate()
    assert [metrics["bbox"]["AP"], metrics["segm"]["AR100"]] == one(2)
    assert metrics["bbox"]["APl"] == -1.0  # the only large object is in image 44
    reference = reference_metrics(shapes_json, detections, image_ids=[11, 22])
    for iou_type in ("bbox", "segm"):
        assert [metrics[iou_type][name] for name in STATS] == reference[iou_type][0]
    unrestricted = reference_metrics(shapes_json, detections)
    assert unrestricted["bbox"][0][8] < 1.0  # AR100 over all images misses image 44's objects


def test_no_detections(shapes_json):
    evaluator = CocoEvaluator(shapes_json)
    with pytest.raises(ValueError, match="no images"):
        evaluator.evaluate()
    for image_id in (11, 22, 33, 44):
        evaluator.add_detections(image_id, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int32))
    metrics = evaluator.evaluate()
    for iou_type in ("bbox", "segm"):
        assert all(metrics[iou_type][name] == 0.0 for name in STATS)  # every area range has gt: 0, not -1
        per_class = metrics[iou_type]["per_class"]
        assert per_class["circle"] == per_class["square"] == per_class["triangle"] == 0.0
        assert math.isnan(per_class["star"])
    # Padding rows only (class 0) are no detections either, and need no masks.
    evaluator = CocoEvaluator(shapes_json)
    evaluator.add_detections(11, np.ones((3, 4)), np.ones(3), np.zeros(3, np.int32))
    assert evaluator.evaluate()["segm"]["AP"] == 0.0


def test_add_batch_maps_boxes_to_original_pixels(shapes_json):
    evaluator = CocoEvaluator(shapes_json, iou_types=("bbox",))
    outputs = {
        # Padded-input pixels; scale (y, x) = (2.0, 1.5): original = (y / 2, x / 1.5).
        "detection_boxes": tf.constant([
            [[20, 30, 60, 90],  # → [10, 20, 30, 60] → COCO [x, y, w, h] = [20, 10, 40, 20]
             [100, -6, 140, 45],  # → [50, -4, 70, 30] → clipped to 64 × 64: [50, 0, 64, 30] → [0, 50, 30, 14]
             [0, 0, 0, 0]],  # padding (class 0)
            [[0, 0, 30, 15],  # → [0, 0, 15, 10] → [0, 0, 10, 15]
             [2, 2, 9, 9],  # beyond num_detections
             [0, 0, 0, 0]]], tf.float32),
        "detection_scores": tf.constant([[0.9, 0.5, 0.0], [0.75, 0.6, 0.0]]),
        "detection_classes": tf.constant([[2, 3, 0], [1, 1, 0]], tf.int32),
        "num_detections": tf.constant([2, 1], tf.int32),
    }
    targets = {"source_id": tf.constant([b"11", b"33"]),
               "original_size": tf.constant([[64, 64], [64, 64]], tf.int32),
               "scale": tf.constant([[2.0, 1.5], [2.0, 1.5]], tf.float32)}
    evaluator.add_batch(outputs, targets)
    assert evaluator.results("bbox") == [
        {"image_id": 11, "category_id": 17, "bbox": [20.0, 10.0, 40.0, 20.0], "score": 0.8999999761581421},
        {"image_id": 11, "category_id": 42, "bbox": [0.0, 50.0, 30.0, 14.0], "score": 0.5},
        {"image_id": 33, "category_id": 3, "bbox": [0.0, 0.0, 10.0, 15.0], "score": 0.75},
    ]
    assert evaluator.image_ids == [11, 33]
    json.dumps(evaluator.results("bbox"))  # plain Python numbers
    with pytest.raises(ValueError, match="already added"):
        evaluator.add_batch(outputs, targets)
    wrong_size = dict(targets, source_id=tf.constant([b"44", b"22"]))
    with pytest.raises(ValueError, match="image 44 is 64x64 in the batch but 128x128"):
        evaluator.add_batch(outputs, wrong_size)
    hashed = dict(targets, source_id=tf.constant([b"9f86d081884c7d65", b"22"]))  # Model Garden's fallback id
    with pytest.raises(ValueError, match="not a COCO image id"):
        evaluator.add_batch(outputs, hashed)


def test_unreadable_polygons_become_empty_masks(tmp_path):
    # pycocotools fails on `[]` or a polygon of fewer than 3 points. A zero-area annotation with `segmentation: []`
    # (as annotation tools export box-only objects) still counts as a missed object in both evaluations, exactly as
    # pycocotools counts it in "bbox" on the file itself.
    data = shapes_coco()
    data["annotations"].append({"id": 99, "image_id": 33, "category_id": 17, "bbox": [10.0, 10.0, 0.0, 5.0],
                                "area": 0.0, "iscrowd": 0, "segmentation": []})
    data["annotations"][0]["segmentation"].append([1, 1, 2, 2])  # a stray 2-point polygon
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    evaluator = CocoEvaluator(str(path))
    for image_id in (11, 22, 33, 44):
        boxes, scores, classes, masks = gt_detections(shapes_coco_api(), image_id)
        evaluator.add_detections(image_id, boxes, scores, classes, masks, masks_in_image=True)
    metrics = evaluator.evaluate()
    for iou_type in ("bbox", "segm"):
        # "square" finds 2 of its 3 objects, at score 1: recall 2/3, AR 2/3; precision 1 at the 67 recall points
        # 0, 0.01, .., 0.66 and 0 beyond, so AP = 67 / 101 at every IoU threshold. The other classes stay perfect.
        assert metrics[iou_type]["per_class"]["square"] == pytest.approx(67 / 101, abs=1e-12)
        assert metrics[iou_type]["AR100"] == pytest.approx((1 + 2 / 3 + 1) / 3, abs=1e-12)
        assert [metrics[iou_type]["per_class"][c] for c in ("circle", "triangle")] == one(2)
    CocoEvaluator(data)
    assert data["annotations"][-1]["segmentation"] == []  # a dict passed in is left alone


def shapes_coco_api():
    coco = COCO()
    coco.dataset = shapes_coco()
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def test_bad_calls(shapes_json):
    evaluator = CocoEvaluator(shapes_json)
    with pytest.raises(ValueError, match="needs masks"):
        evaluator.add_detections(11, [[0, 0, 5, 5]], [0.9], [1])
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluator.add_detections(12, np.zeros((0, 4)), [], [])
    with pytest.raises(ValueError, match="64x64 but its masks are 32x32"):
        evaluator.add_detections(11, [[0, 0, 5, 5]], [0.9], [1], np.ones((1, 32, 32)), masks_in_image=True)
    with pytest.raises(ValueError, match="iou_types"):
        CocoEvaluator(shapes_json, iou_types=("keypoints",))
    boxes_only = shapes_coco()
    for ann in boxes_only["annotations"]:
        del ann["segmentation"]
    with pytest.raises(ValueError, match="without 'segmentation'"):
        CocoEvaluator(boxes_only)
    CocoEvaluator(boxes_only, iou_types=("bbox",))


def paste_cases(rng, n=40):
    """n random box-frame masks and boxes on a 64 × 64 image (more than one paste group of 16), plus boxes that
    fill the image, reach past its borders, are tiny, have zero size, or lie wholly outside it."""
    masks = rng.uniform(0, 1, (n, 28, 28)).astype(np.float32)
    y1, x1 = rng.uniform(-10, 60, n), rng.uniform(-10, 60, n)
    boxes = np.stack([y1, x1, y1 + rng.uniform(0.5, 40, n), x1 + rng.uniform(0.5, 40, n)], 1)
    boxes[:6] = [[0, 0, 64, 64], [-4, 50, 20, 70], [40.5, 10.2, 63.9, 50.7], [30, 30, 33, 31], [9, 9, 9, 20],
                 [70, 5, 90, 30]]
    return masks, boxes.astype(np.float32)


def pasted_by(evaluator):
    return np.stack([mask_utils.decode(r["segmentation"]) for r in evaluator.results("segm")])


def test_window_paste_equals_whole_image_paste(shapes_json):
    # The evaluator pastes each mask into a window around its box; in "mmdet" mode that gives the same bits as
    # paste_masks over the whole image (thresholded `>= 0.5`).
    masks, boxes = paste_cases(np.random.default_rng(5))
    evaluator = CocoEvaluator(shapes_json, iou_types=("segm",))
    evaluator.add_detections(11, boxes, np.ones(len(boxes)), np.ones(len(boxes), np.int32), masks)
    expected = paste_masks(masks[None], boxes[None], (64, 64), mode="mmdet", threshold=0.5)[0].numpy()
    got = pasted_by(evaluator)
    np.testing.assert_array_equal(got, expected)
    assert got[0].sum() > 1000 and got[4].sum() == got[5].sum() == 0


def test_torchvision_paste_mode_matches_torchvision(shapes_json):
    # mask_paste_mode="torchvision" pastes as torchvision's paste_masks_in_image and thresholds with `> 0.5`, as its
    # COCO evaluation does.
    masks, boxes = paste_cases(np.random.default_rng(3))
    inside = (boxes[:, 0] < 64) & (boxes[:, 1] < 64) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    masks, boxes = masks[inside], boxes[inside]  # torchvision fails on some boxes wholly outside the image
    assert len(boxes) > 16
    evaluator = CocoEvaluator(shapes_json, iou_types=("segm",), mask_paste_mode="torchvision")
    evaluator.add_detections(11, boxes, np.ones(len(boxes)), np.ones(len(boxes), np.int32), masks)
    xyxy = torch.from_numpy(boxes[:, [1, 0, 3, 2]])
    expected = (paste_masks_in_image(torch.from_numpy(masks)[:, None], xyxy, (64, 64))[:, 0] > 0.5).numpy()
    got = pasted_by(evaluator)
    # Float rounding may flip a pixel interpolated to within ~1e-6 of the threshold; none should differ otherwise.
    assert (got != expected).sum() <= 2
    assert got.sum() > 1000


# ---------------------------------------------------------------------------------------------- 4: evaluate_model

def test_evaluate_model_on_a_dataset(tmp_path):
    # Batches as build_dataset(config, "val", training=False) makes them: three images resized ×2 and padded to
    # 176 × 176, batch size 2 (the last batch has one image). The fake model reads which image it sees from pixel
    # [0, 0, 0] and returns that image's gt in padded-input pixels, with 28 × 28 masks of ones (exact for these
    # rectangles, see above).
    data = rectangles_coco()
    path = tmp_path / "rectangles.json"
    path.write_text(json.dumps(data))
    coco = quiet_coco(str(path))
    ids = [5, 7, 9]
    k = 3
    table = np.zeros((3, k, 4), np.float32)
    classes = np.zeros((3, k), np.int32)
    num = np.zeros(3, np.int32)
    for i, image_id in enumerate(ids):
        boxes, _, cls, _ = gt_detections(coco, image_id)
        table[i, :len(boxes)], classes[i, :len(boxes)], num[i] = boxes * 2.0, cls, len(boxes)
    sizes = np.array([[coco.imgs[i]["height"], coco.imgs[i]["width"]] for i in ids], np.int32)
    images = np.zeros((3, 176, 176, 3), np.float32)
    images[:, 0, 0, 0] = np.arange(3)
    targets = {"image_size": sizes * 2, "source_id": np.array([str(i).encode() for i in ids]),
               "original_size": sizes, "scale": np.full((3, 2), 2.0, np.float32),
               "gt_boxes": np.zeros((3, 4, 4), np.float32)}
    dataset = tf.data.Dataset.from_tensor_slices((images, targets)).batch(2)

    @tf.function
    def predict_fn(inputs):
        index = tf.cast(inputs["images"][:, 0, 0, 0], tf.int32)
        batch = tf.shape(index)[0]
        return {"detection_boxes": tf.gather(table, index), "detection_classes": tf.gather(classes, index),
                "detection_scores": tf.cast(tf.gather(classes, index) > 0, tf.float32),
                "num_detections": tf.gather(num, index), "detection_masks": tf.ones([batch, k, 28, 28])}

    metrics = evaluate_model(predict_fn, dataset, CocoEvaluator(str(path)), progress=False)
    assert [metrics["bbox"]["AP"], metrics["segm"]["AP"]] == one(2)

    evaluator = CocoEvaluator(str(path))
    metrics = evaluate_model(predict_fn, dataset, evaluator, max_images=1, progress=False)
    assert evaluator.image_ids == [5]
    assert metrics["segm"]["AP"] == one()
