"""tfrcnn.evaluation.analysis and scripts/analyze_results.py on small hand-built and random COCO cases.

The hand-built cases plant each kind of error once and spell out the expected numbers; the random case checks our
own matching against pycocotools' COCOeval, class by class.
"""
import contextlib
import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tfrcnn.evaluation import analysis
from tfrcnn.evaluation.analysis import ERROR_TYPES, EvaluationSet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "analyze_results.py")
CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]


def coco_api(images, annotations, categories=CATEGORIES):
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def image(image_id, height=200, width=200):
    return {"id": image_id, "file_name": f"img{image_id}.png", "height": height, "width": width}


def gt(ann_id, image_id, category_id, bbox, iscrowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": [float(v) for v in bbox],
            "area": float(bbox[2] * bbox[3]), "iscrowd": iscrowd}


def det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": [float(v) for v in bbox], "score": score}


# ---------------------------------------------------------------------------------------------- confusion matrix

def test_confusion_matrix_counts_a_hand_built_case():
    coco = coco_api([image(1), image(2), image(3)], [
        gt(1, 1, 1, [10, 10, 40, 40]), gt(2, 1, 2, [100, 100, 40, 40]),
        gt(3, 2, 3, [20, 20, 50, 50]),
        gt(4, 3, 1, [0, 0, 100, 100], iscrowd=1), gt(5, 3, 1, [150, 150, 30, 30])])
    results = [
        det(1, 1, [10, 10, 40, 40], 0.9),      # right class: [a, a]
        det(1, 3, [101, 100, 40, 40], 0.8),    # b labelled c: [b, c], and b is missed: [b, background]
        det(2, 2, [150, 150, 30, 30], 0.7),    # nothing there: [background, b]; c is missed: [c, background]
        det(2, 1, [20, 20, 50, 50], 0.1),      # below score_thr: counts nowhere (else [c, a])
        det(3, 2, [10, 10, 20, 20], 0.9),      # inside a crowd region: counts nowhere
        det(3, 1, [150, 150, 30, 30], 0.95),   # right class: [a, a]
        det(3, 1, [151, 150, 30, 30], 0.6),    # a duplicate counts on the diagonal too (MMDetection's rule)
    ]
    matrix = analysis.confusion_matrix(EvaluationSet(results, coco), score_thr=0.3, tp_iou_thr=0.5)
    #                     a  b  c  background (predicted)
    expected = np.array([[3, 0, 0, 0],    # a
                         [0, 0, 1, 1],    # b
                         [0, 0, 0, 1],    # c
                         [0, 1, 0, 0]])   # background
    np.testing.assert_array_equal(matrix, expected)
    # At score_thr 0.05 the low-scoring a on c counts as [c, a]; c is still missed (no c found it).
    expected[2, 0] += 1
    np.testing.assert_array_equal(analysis.confusion_matrix(EvaluationSet(results, coco), score_thr=0.05), expected)


# ---------------------------------------------------------------------------------------------- TIDE errors

def _shifted(box, iou):
    """`box` [x, y, w, h] moved right until its IoU with itself is `iou`: (w - dx) h = iou (2 w h - (w - dx) h)."""
    x, y, w, h = box
    return [x + w - 2 * iou * w / (1 + iou), y, w, h]


def test_error_breakdown_finds_each_planted_error_and_fixing_it_raises_ap():
    box = [10, 10, 40, 40]
    coco = coco_api([image(i) for i in range(1, 6)], [
        gt(1, 1, 1, box), gt(2, 2, 2, box), gt(3, 3, 1, box), gt(4, 4, 1, box), gt(5, 5, 1, box)])
    planted = {
        "TP": det(1, 1, box, 0.90),
        "Dupe": det(1, 1, [11, 10, 40, 40], 0.88),       # a second a on gt 1
        "Cls": det(2, 1, box, 0.85),                     # an a on gt 2, a b
        "Loc": det(3, 1, _shifted(box, 0.3), 0.95),      # an a on gt 3 at IoU 0.3
        "Bkg": det(4, 1, [150, 150, 30, 30], 0.99),      # far from gt 4, which nothing finds: Missed
        "TP late": det(5, 1, box, 0.50),
        "Both": det(5, 2, _shifted(box, 0.3), 0.40),     # a b at IoU 0.3 on gt 5, an a
    }
    results = list(planted.values())
    evaluation = EvaluationSet(results, coco)
    det_type, _, missed = analysis.error_types(evaluation)
    found = {}
    for k, code in zip(evaluation.det_record.tolist(), det_type.tolist()):
        found[list(planted)[k]] = "TP" if code < 0 else ERROR_TYPES[code]
    assert found == {name: name.split()[0] for name in planted}
    assert evaluation.gt_ann_id[missed].tolist() == [4]

    breakdown = analysis.error_breakdown(evaluation)
    assert {name: v["count"] for name, v in breakdown["types"].items()} == dict.fromkeys(ERROR_TYPES, 1)
    # Class a ranks FP (Bkg) FP (Loc) TP FP (Dupe) FP (Cls) TP against 4 objects: precision 1/3 at recall 1/4
    # and 2/6 at 1/2, so 1/3 at the 51 recall points up to 0.5. Class b has 1 object and no b on it: AP 0.
    ap_a = 51 * (1 / 3) / 101
    assert breakdown["AP"] == pytest.approx(ap_a / 2)
    for name in ("Cls", "Loc", "Dupe", "Bkg", "Missed"):
        assert breakdown["types"][name]["dAP"] > 0.01, name
    # Relabelling the a on gt 2 as b gives b an AP of 1; a loses that FP: precision 2/5 at recall 1/2, and the
    # monotone curve carries 2/5 back to recall 0.
    fixed_a = 51 * (2 / 5) / 101
    assert breakdown["types"]["Cls"]["dAP"] == pytest.approx((fixed_a + 1.0) / 2 - ap_a / 2)
    # The Both error comes after both TPs: suppressing it changes nothing.
    assert breakdown["types"]["Both"]["dAP"] == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------------- PR curves

def random_case(seed, num_images=12, with_masks=False):
    """Several classes, jittered boxes around the gts, random scores, background boxes, crowd gts, and one image
    with more than 100 detections of a class."""
    rng = np.random.default_rng(seed)
    images = [image(i, 120, 160) for i in range(1, num_images + 1)]
    annotations, results = [], []
    for entry in images:
        for _ in range(rng.integers(0, 7)):
            w, h = rng.uniform(8, 60, 2)
            x, y = rng.uniform(0, 160 - w), rng.uniform(0, 120 - h)
            category = int(rng.integers(1, 4))
            annotations.append(gt(len(annotations) + 1, entry["id"], category, [x, y, w, h],
                                  iscrowd=int(rng.random() < 0.15)))
            for _ in range(rng.integers(0, 4)):
                jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
                label = category if rng.random() < 0.8 else int(rng.integers(1, 4))
                results.append(det(entry["id"], label, [x + jitter[0], y + jitter[1], max(2.0, w + jitter[2]),
                                                        max(2.0, h + jitter[3])], float(rng.uniform(0.2, 1.0))))
        for _ in range(rng.integers(0, 4)):
            w, h = rng.uniform(8, 40, 2)
            results.append(det(entry["id"], int(rng.integers(1, 4)), [rng.uniform(0, 120), rng.uniform(0, 80), w, h],
                               float(rng.uniform(0.0, 0.8))))
    # Image 1 also holds 20 small b's, found by 20 detections that score below 100 b's on background: COCOeval
    # keeps the 100 best of an image and category, so those objects count as missed.
    for row in range(4):
        for column in range(5):
            box = [5 + 30 * column, 5 + 28 * row, 20, 20]
            annotations.append(gt(len(annotations) + 1, 1, 2, box))
            results.append(det(1, 2, [box[0] + rng.normal(0, 1), box[1] + rng.normal(0, 1), 20, 20],
                               float(rng.uniform(0.3, 0.5))))
    results += [det(1, 2, [rng.uniform(0, 150), rng.uniform(0, 110), 2, 2], float(rng.uniform(0.6, 1.0)))
                for _ in range(100)]
    if with_masks:
        for record in annotations + results:
            x, y, w, h = record["bbox"]
            mask = np.zeros((120, 160), np.uint8)
            mask[int(max(0, y)):int(y + h), int(max(0, x)):int(x + w)] = 1
            rle = mask_utils.encode(np.asfortranarray(mask))
            record["segmentation"] = dict(rle, counts=rle["counts"].decode("ascii"))
    return coco_api(images, annotations), results


def cocoeval_class_ap(coco, results, iou_type):
    """{iou threshold: [C] AP per class} from pycocotools: eval['precision'][t, :, k, area all, maxDets 100]."""
    records = [dict(r) for r in results]
    if iou_type == "segm":
        records = [{k: v for k, v in r.items() if k != "bbox"} for r in records]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(coco, coco.loadRes(records), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
    aps = {}
    for t in (0.5, 0.75):
        t_index = int(np.argmin(np.abs(evaluation.params.iouThrs - t)))
        per_class = []
        for k in range(len(evaluation.params.catIds)):
            precision = evaluation.eval["precision"][t_index, :, k, 0, -1]
            per_class.append(precision[precision > -1].mean() if (precision > -1).any() else np.nan)
        aps[t] = np.array(per_class)
    return aps


@pytest.mark.parametrize("seed", [0, 1])
def test_pr_curve_areas_match_pycocotools_per_class_ap(seed):
    coco, results = random_case(seed)
    expected = cocoeval_class_ap(coco, results, "bbox")
    evaluation = EvaluationSet(results, coco)
    for t in (0.5, 0.75):
        precision, ap = analysis.precision_recall(evaluation, t)
        assert precision.shape == (3, 101)
        np.testing.assert_allclose(np.nanmean(precision, axis=1), ap)
        assert (expected[t] > 0.05).sum() >= 2, "the case should have classes with some AP"
        np.testing.assert_allclose(ap, expected[t], atol=0.01, err_msg=f"IoU {t}")


def test_segm_pr_curve_areas_match_pycocotools():
    coco, results = random_case(2, num_images=6, with_masks=True)
    expected = cocoeval_class_ap(coco, results, "segm")
    evaluation = EvaluationSet(results, coco, iou_type="segm")
    for t in (0.5, 0.75):
        _, ap = analysis.precision_recall(evaluation, t)
        np.testing.assert_allclose(ap, expected[t], atol=0.01, err_msg=f"IoU {t}")


# ---------------------------------------------------------------------------------------------- inputs and analyze

def test_bad_results_name_the_source_and_the_id():
    coco = coco_api([image(1)], [gt(1, 1, 1, [10, 10, 40, 40])])
    with pytest.raises(ValueError, match=r"^preds\.json: not a COCO results file: the top level is a dict"):
        analysis.check_results({"annotations": []}, coco, source="preds.json")
    with pytest.raises(ValueError, match=r"^preds\.json: record 1: category_id 9 is not a category"):
        analysis.check_results([det(1, 1, [0, 0, 5, 5], 0.5), det(1, 9, [0, 0, 5, 5], 0.5)], coco, source="preds.json")
    with pytest.raises(ValueError, match=r"^preds\.json: record 0: image_id 7 is not an image"):
        analysis.check_results([det(7, 1, [0, 0, 5, 5], 0.5)], coco, source="preds.json")
    with pytest.raises(ValueError, match=r"record 0: bbox \[0, 0, -5, 5\] is not"):
        analysis.check_results([{**det(1, 1, [0, 0, 5, 5], 0.5), "bbox": [0, 0, -5, 5]}], coco)


def test_empty_results_miss_everything(tmp_path):
    coco = coco_api([image(1), image(2)], [gt(1, 1, 1, [10, 10, 40, 40]), gt(2, 2, 3, [5, 5, 20, 20])])
    report = analysis.analyze([], coco, str(tmp_path), num_worst=1)
    assert report["AP50"] == 0.0 and report["AP75"] == 0.0
    assert report["errors"]["types"]["Missed"]["count"] == 2
    assert report["confusion_matrix"][0][3] == 1 and report["confusion_matrix"][2][3] == 1
    assert report["worst_images"] == [{"image_id": 1, "file_name": "img1.png", "false_positives": 0, "missed": 1}]


def test_worst_images_rank_false_positives_and_missed():
    coco = coco_api([image(1), image(2), image(3)], [gt(1, 1, 1, [10, 10, 40, 40]), gt(2, 2, 1, [10, 10, 40, 40]),
                                                     gt(3, 3, 2, [10, 10, 40, 40])])
    results = [det(1, 1, [10, 10, 40, 40], 0.9),                                     # image 1: right
               det(2, 1, [100, 100, 20, 20], 0.9), det(2, 1, [150, 150, 20, 20], 0.8),  # image 2: 2 FP + missed
               det(3, 2, [10, 10, 40, 40], 0.2)]                                     # image 3: below 0.3: missed
    worst = analysis.worst_images(EvaluationSet(results, coco), num_worst=5, score_thr=0.3)
    assert [(w["image_id"], w["false_positives"], w["missed"]) for w in worst] == [(2, 2, 1), (3, 0, 1)]
    # Only the evaluated images count: image 2 left out, its detections and objects are nobody's errors.
    worst = analysis.worst_images(EvaluationSet(results, coco, image_ids=[1, 3]), num_worst=5, score_thr=0.3)
    assert [(w["image_id"], w["false_positives"], w["missed"]) for w in worst] == [(3, 0, 1)]


# ---------------------------------------------------------------------------------------------- the script

def _script(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


def test_script_writes_every_output_and_reports_a_bad_category_in_one_line(tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    rng = np.random.default_rng(0)
    coco, results = random_case(3, num_images=3, with_masks=True)
    for entry in coco.dataset["images"]:
        Image.fromarray(rng.integers(0, 255, (entry["height"], entry["width"], 3), dtype=np.uint8)).save(
            images_dir / entry["file_name"])
    ann_file, results_file = tmp_path / "instances.json", tmp_path / "detections.json"
    ann_file.write_text(json.dumps(coco.dataset))
    results_file.write_text(json.dumps(results))
    out = tmp_path / "analysis"

    run = _script("--results", results_file, "--ann_file", ann_file, "--image_dir", images_dir, "--output_dir", out,
                  "--num_worst", 2, "--iou_type", "segm")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "AP50" in run.stdout and "files written:" in run.stdout
    for name in ("pr_curves.png", "pr_curves.csv", "pr_curves.json", "confusion_matrix.png", "confusion_matrix.csv",
                 "errors.png", "errors.csv", "errors.json", "summary.txt"):
        assert (out / name).is_file(), name
    worst = sorted((out / "worst").iterdir())
    assert len(worst) == 2
    for png in [out / "pr_curves.png", out / "confusion_matrix.png", out / "errors.png", *worst]:
        with Image.open(png) as picture:
            picture.verify()
    with Image.open(worst[0]) as picture:
        assert picture.size[0] > 2 * 160 and picture.size[1] > 120  # two panels side by side, a caption above

    def header(name):
        with open(out / name, newline="") as f:
            return next(csv.reader(f))
    assert header("pr_curves.csv") == ["category_id", "category", "iou_thr", "ap", "recall", "precision"]
    assert header("confusion_matrix.csv") == ["ground truth \\ predicted", "a", "b", "c", "background"]
    assert header("errors.csv") == ["type", "count", "dAP"]
    errors = json.loads((out / "errors.json").read_text())
    assert list(errors["types"]) == list(ERROR_TYPES)

    results_file.write_text(json.dumps(results + [det(1, 42, [0, 0, 5, 5], 0.5)]))
    run = _script("--results", results_file, "--ann_file", ann_file, "--output_dir", tmp_path / "bad")
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 1 and len(lines) == 1, run.stderr
    assert lines[0].startswith(f"error: {results_file}: record {len(results)}: category_id 42 is not a category")
