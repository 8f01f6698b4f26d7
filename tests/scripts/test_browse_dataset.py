"""scripts/browse_dataset.py as a user runs it, on the small COCO dataset of tests/data/coco_fixtures.py."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.data.coco_fixtures import write_coco
from tfrcnn.visualize import CROWD_COLOR, MASK_ALPHA, category_color

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "browse_dataset.py")
TINY = os.path.join(ROOT, "tests", "modeling", "configs", "mask_rcnn_r18_tiny.yaml")


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    ann_path, image_dir, data = write_coco(str(root))
    # one more image that does not decode, with an object: it must be named, not dropped silently
    with open(os.path.join(image_dir, "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not an image")
    data["images"].append({"id": 5, "file_name": "broken.png", "height": 20, "width": 20})
    data["annotations"].append({"id": 51, "image_id": 5, "category_id": 3, "bbox": [1.0, 1.0, 5.0, 5.0],
                                "area": 25.0, "iscrowd": 0, "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]})
    with open(ann_path, "w", encoding="utf8") as f:
        json.dump(data, f, ensure_ascii=False)
    return ann_path, image_dir


def _run(coco, *args):
    ann_path, image_dir = coco
    splits = {f"data.{s}.{k}": v for s in ("train", "val") for k, v in
              (("ann_file", ann_path), ("img_prefix", image_dir), ("tfrecord", "null"))}
    overrides = dict(splits, **{
        "data.category_ids": "[3,17,42]", "data.classes": "[trois,dix-sept,quarante-deux]",
        "model.roi_head.bbox_head.num_classes": 3, "model.roi_head.mask_head.num_classes": 3,
        "data.img_scale": "[64,64]", "data.pad_size": "[64,64]", "data.flip_ratio": 0.0})
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, SCRIPT, "--config_file", TINY, "--params_override",
                           ",".join(f"{k}={v}" for k, v in overrides.items()), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def _pixels(path):
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB")).astype(np.int64)


def test_train_split_as_the_model_receives_it(coco, tmp_path):
    result = _run(coco, "--split", "train", "--output_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    # image 4 has no object (filter_empty_gt); broken.png is named where it is skipped
    assert sorted(os.listdir(tmp_path)) == ["1.png", "2.png", "3.png"]
    assert "broken.png" in result.stderr
    assert "drew 3 images" in result.stdout
    original = _pixels(os.path.join(coco[1], "scène_1.png"))  # 48 x 64: resized at scale 1, padded to 64 x 64
    drawn = _pixels(tmp_path / "1.png")
    assert drawn.shape == (64, 64, 3)
    assert drawn[48:].max() <= 255 // 3  # the padding, darkened
    # annotation 12 (category 3) is two squares in one box: its mask is blended in them, not between them
    blended = np.round((1 - MASK_ALPHA) * original[40, 26] + MASK_ALPHA * np.array(category_color(3)))
    np.testing.assert_allclose(drawn[40, 26], blended, atol=1)
    np.testing.assert_allclose(drawn[30, 16], original[30, 16], atol=1)
    np.testing.assert_array_equal(drawn[15, 40], CROWD_COLOR)  # the crowd region's left side (x = 40)
    assert _pixels(tmp_path / "2.png").shape == (64, 64, 3)  # 40 x 30 resized to 64 x 48 and padded


def test_raw_draws_the_records_as_stored(coco, tmp_path):
    result = _run(coco, "--split", "val", "--raw", "--max_images", "3", "--output_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["1.png", "2.png", "3.png"]
    assert _pixels(tmp_path / "2.png").shape == (40, 30, 3)
    drawn, original = _pixels(tmp_path / "1.png"), _pixels(os.path.join(coco[1], "scène_1.png"))
    np.testing.assert_array_equal(drawn[15, 40], CROWD_COLOR)
    blended = np.round((1 - MASK_ALPHA) * original[40, 26] + MASK_ALPHA * np.array(category_color(3)))
    np.testing.assert_allclose(drawn[40, 26], blended, atol=1)
    np.testing.assert_array_equal(drawn[30, 16], original[30, 16])


def test_a_missing_config_is_one_error_line(tmp_path):
    result = subprocess.run([sys.executable, SCRIPT, "--model_dir", str(tmp_path), "--output_dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path}/config.yaml: config file not found: {tmp_path}/config.yaml"]
