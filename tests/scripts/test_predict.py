"""scripts/predict.py as a user runs it: a real process on a tiny (untrained) run directory."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import tfrcnn
from tfrcnn.config import save_config
from tfrcnn.training import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tests", "modeling", "configs", "mask_rcnn_r18_tiny.yaml")
SCRIPT = os.path.join(ROOT, "scripts", "predict.py")
# score_thr 0: an untrained model still returns detections; 128 px inputs keep the run short on a CPU.
OVERRIDES = "test_cfg.rcnn.score_thr=0.0, test_cfg.rcnn.max_per_img=5, data.img_scale=[128, 128]"


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    cfg = tfrcnn.load_config(TINY, OVERRIDES)
    model = tfrcnn.build_model(cfg)
    save_config(cfg, path / checkpoints.CONFIG_NAME)
    checkpoints.run_checkpoint(model).save(str(path / "ckpt"))
    return path


def _images(folder):
    """Two small JPEGs of different sizes, one named by a COCO-style number."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in (("000000000042.jpg", (72, 96)), ("street.jpg", (100, 64))):
        image = rng.integers(60, 200, (h, w, 3), dtype=np.uint8)
        image[10:40, 10:50] = (220, 40, 40)
        Image.fromarray(image).save(folder / name, quality=95)
    return folder


def test_predict_from_a_checkpoint_writes_pngs_and_coco_results(run_dir, tmp_path):
    images = _images(tmp_path / "images")
    out = tmp_path / "out"
    result = _run("--model_dir", str(run_dir), "--image", str(images), "--output_dir", str(out),
                  "--score_threshold", "0.0")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [l for l in result.stdout.splitlines() if re.search(r"\.jpg: \d+ detections", l)]
    assert len(lines) == 2, result.stdout
    for name, size in (("000000000042", (96, 72)), ("street", (64, 100))):
        with Image.open(out / f"{name}.png") as picture:
            assert picture.size == size and picture.mode == "RGB"  # (width, height) of the input
    results = json.loads((out / "detections.json").read_text())
    assert results, "score_thr 0 keeps every detection"
    assert {r["image_id"] for r in results} <= {42, 1}  # a numeric stem is the id; otherwise the position
    assert {r["file_name"] for r in results} <= {"000000000042.jpg", "street.jpg"}
    heights = {42: 72, 1: 100}
    widths = {42: 96, 1: 64}
    for r in results:
        assert r["category_id"] in (1, 2) and 0.0 <= r["score"] <= 1.0
        x, y, w, h = r["bbox"]
        assert w >= 0 and h >= 0 and x >= 0 and y >= 0
        assert x + w <= widths[r["image_id"]] + 1e-3 and y + h <= heights[r["image_id"]] + 1e-3
        assert r["segmentation"]["size"] == [heights[r["image_id"]], widths[r["image_id"]]]
        assert mask_utils.decode(r["segmentation"]).shape == (heights[r["image_id"]], widths[r["image_id"]])
    assert len(results) <= 2 * 5  # max_per_img


def test_two_detectors_are_one_error_line(tmp_path):
    # (a missing image, a bad flag: tests/scripts/test_flags.py; a damaged checkpoint: test_errors.py)
    result = _run("--saved_model_dir", str(tmp_path), "--model_dir", str(tmp_path), "--image", str(tmp_path),
                  "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 1
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "--model_dir" in errors[0], result.stderr
