"""scripts/train.py on a training set that yields no batch, and on out-of-range config values: one `error:` line
that says why, exit status 1, and no run directory written."""
import json
import os
import subprocess
import sys

import pytest

from tfrcnn.data.shapes import generate_shapes_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(REPO, "scripts", "train.py")
CONFIG = os.path.join(REPO, "configs", "mask_rcnn_r18_fpn_shapes.yaml")
# The scripts' own log level, not the one conftest sets for the tests' process
QUIET = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    shapes = generate_shapes_dataset(str(root), num_train=4, num_val=2, image_size=64, num_shards=1)
    with open(shapes.train_annotations) as f:
        data = json.load(f)
    with open(root / "no_annotations.json", "w") as f:
        json.dump(dict(data, annotations=[]), f)
    return shapes, str(root / "no_annotations.json")


@pytest.mark.parametrize("case", ["no category", "no annotation", "fewer than a batch", "samples_per_gpu 0"])
def test_no_training_batch_is_one_error_line(shapes, tmp_path, case):
    shapes, no_annotations = shapes
    data = {"data.train.tfrecord": shapes.train_tfrecords, "data.img_scale": "[64,64]", "data.pad_size": "[64,64]"}
    data.update({"no category": {"data.category_ids": "[7,8,9]"},
                 "no annotation": {"data.train.tfrecord": "null", "data.train.ann_file": no_annotations,
                                   "data.train.img_prefix": shapes.train_image_dir},
                 "fewer than a batch": {"data.samples_per_gpu": 5},
                 "samples_per_gpu 0": {"data.samples_per_gpu": 0}}[case])
    model_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, TRAIN, "--config_file", CONFIG, "--model_dir", str(model_dir),
                          "--params_override", ",".join(f"{k}={v}" for k, v in data.items())],
                         capture_output=True, text=True, timeout=300, env=QUIET)
    assert out.returncode == 1, out.stderr
    errors = out.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: "), out.stderr
    expected = {
        "no category": f"error: data.train ({shapes.train_tfrecords}): no training batch: no annotation has a "
                       "category of data.category_ids [7, 8, 9]; its category ids are [1, 2, 3]",
        "no annotation": f"error: data.train ({no_annotations}): no training batch: none of its 4 images has an "
                         "annotation",
        "fewer than a batch": f"error: data.train ({shapes.train_tfrecords}): no training batch: 4 of its 4 images "
                              "have an object of data.category_ids (category ids found: [1, 2, 3]), fewer than one "
                              "batch of 5 (data.samples_per_gpu x replicas)",
        "samples_per_gpu 0": "error: --params_override: data.samples_per_gpu: must be >= 1, got int 0",
    }[case]
    assert errors[0] == expected
    assert not model_dir.exists()
