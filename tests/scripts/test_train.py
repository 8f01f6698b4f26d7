"""scripts/train.py as a user runs it: a real process, killed with SIGKILL and started again."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tfrcnn.data.shapes import generate_shapes_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(REPO, "scripts", "train.py")
CONFIG = os.path.join(REPO, "configs", "mask_rcnn_r18_fpn_shapes.yaml")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes_dataset(str(tmp_path_factory.mktemp("shapes")), num_train=16, num_val=4, image_size=64,
                                   num_shards=1)


def overrides(shapes, **extra):
    values = {"data.train.tfrecord": shapes.train_tfrecords, "data.val.tfrecord": shapes.val_tfrecords,
              "data.val.ann_file": shapes.val_annotations, "data.img_scale": "[64,64]", "data.pad_size": "[64,64]",
              "runner.max_epochs": 3, "checkpoint_config.interval": 2, "log_config.interval": 1,
              "test_cfg.rcnn.score_thr": 0.0, **extra}
    return ",".join(f"{k}={v}" for k, v in values.items())


def command(shapes, model_dir, **extra):
    return [sys.executable, TRAIN, "--config_file", CONFIG, "--model_dir", str(model_dir),
            "--params_override", overrides(shapes, **extra)]


ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def recorded_step(model_dir):
    """The step of the checkpoint that model_dir's `checkpoint` record names (what a restart resumes from); 0 if none."""
    try:
        record = (model_dir / "checkpoint").read_text()
    except FileNotFoundError:
        return 0
    found = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', record, re.MULTILINE)
    return int(found.group(1)) if found else 0


def test_sigkill_then_rerun_resumes_evaluates_to_tensorboard_and_eval_writes_metrics(shapes, tmp_path):
    model_dir = tmp_path / "run"
    # 16 images / batch 4 = 4 steps an epoch, 3 epochs = 12 steps, a checkpoint every 2 steps
    process = subprocess.Popen(command(shapes, model_dir), env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while recorded_step(model_dir) < 4:
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, "no checkpoint at step 4 within 240 s"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # a save is complete once the manager records it; the kill may land after ckpt-N.index and before that record
    killed_at = recorded_step(model_dir)
    assert 4 <= killed_at < 12
    # the rerun evaluates too (every epoch: steps 8 and 12): TensorBoard gets the evaluations' summaries
    out = subprocess.run(command(shapes, model_dir) + ["--mode", "train_and_eval"], env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from {model_dir / f'ckpt-{killed_at}'} at step {killed_at}" in out.stdout
    steps = [int(line.split()[1].split("/")[0]) for line in out.stdout.splitlines() if line.startswith("step ")]
    assert steps[0] == killed_at + 1 and steps[-1] == 12  # the global step continued, nothing redone or lost
    assert (model_dir / "ckpt-12.index").exists() and (model_dir / "config.yaml").exists()
    check_tensorboard_evaluation(model_dir, step=12)

    out = subprocess.run(command(shapes, model_dir) + ["--mode", "eval"], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert set(metrics) >= {"bbox", "segm"}
    assert set(metrics["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "per_class"}
    assert "per-class AP" in (model_dir / "metrics.txt").read_text()

    # scripts/evaluate.py on the same run: a quick look at 2 images, written elsewhere, with the error analysis
    # (the val split's images come from its TFRecords: its ann_file has no image folder in this config)
    out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "evaluate.py"), "--model_dir",
                          str(model_dir), "--max_images", "2", "--output_dir", str(tmp_path / "eval"), "--analyze",
                          "--params_override", "data.val.img_prefix=null"],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ckpt-12: metrics written to" in out.stdout
    assert set(json.loads((tmp_path / "eval" / "metrics.json").read_text())) >= {"bbox", "segm"}
    detections = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert {d["image_id"] for d in detections} <= {1, 2} and all("segmentation" in d for d in detections)
    for iou_type in ("bbox", "segm"):
        folder = tmp_path / "eval" / "analysis" / iou_type
        assert {"pr_curves.png", "confusion_matrix.png", "confusion_matrix.csv", "errors.png", "errors.csv",
                "summary.txt"} <= set(os.listdir(folder))
        assert "on 2 images" in (folder / "summary.txt").read_text()  # --max_images: the others are not missed
        # score_thr 0: an untrained model's detections leave errors, and the worst images are drawn
        assert os.listdir(folder / "worst")


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(shapes, tmp_path):
    model_dir = tmp_path / "nan"
    out = subprocess.run(command(shapes, model_dir, **{"optimizer.lr": "1e30", "optimizer_config.grad_clip": "null",
                                                       "lr_config.warmup": "null"}),
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the loss is nan at step" in errors[0].replace("inf", "nan"), out.stderr[-2000:]
    assert "Traceback" not in out.stderr


# (a missing config file, a bad flag, --help: tests/scripts/test_flags.py, for every script; TensorFlow's errors
# on a damaged checkpoint, image or shard: tests/scripts/test_errors.py)
@pytest.mark.parametrize("args, message", [
    (["--config_file", CONFIG, "--params_override", "model.backbone.depth=7"], "model.backbone.depth: expected one of"),
])
def test_bad_input_is_one_error_line(tmp_path, args, message):
    out = subprocess.run([sys.executable, TRAIN, "--model_dir", str(tmp_path / "x")] + args, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr[-2000:]


def test_a_missing_pretrained_file_is_one_error_line_before_anything_is_written(shapes, tmp_path):
    # the shipped COCO config: pretrained torchvision://resnet50, which nothing downloads
    env = dict(ENV, TORCH_HOME=str(tmp_path / "torch"), HOME=str(tmp_path / "home"))
    env.pop("XDG_CACHE_HOME", None)
    out = subprocess.run([sys.executable, TRAIN, "--config_file", os.path.join(REPO, "configs",
                                                                               "mask_rcnn_r50_fpn_1x_coco.yaml"),
                          "--model_dir", str(tmp_path / "run"), "--params_override",
                          f"data.train.tfrecord={shapes.train_tfrecords}"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr[-2000:]
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    for part in ("resnet50-0676ba61.pth", str(hub), str(tmp_path / "home" / ".cache" / "torch" / "hub" / "checkpoints"),
                 "https://download.pytorch.org/models/resnet50-0676ba61.pth", f"copy it to {hub}"):
        assert part in errors[0], errors[0]
    assert not (tmp_path / "run").exists()


def _summaries(log_dir):
    """{tag: [(step, plugin name, tensor)]} of every event file under log_dir."""
    import tensorflow as tf

    found = {}
    for path in log_dir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(
                    (event.step, value.metadata.plugin_data.plugin_name, tf.make_ndarray(value.tensor)))
    return found


def check_tensorboard_evaluation(model_dir, step):
    """The event files hold, at the evaluation of `step`, each class's AP as in metrics.json and the first 4 val
    images drawn (images-plugin records: width, height, PNG)."""
    import io

    from PIL import Image

    summaries = {tag: {s: (plugin, tensor) for s, plugin, tensor in entries}
                 for tag, entries in _summaries(model_dir / "logs").items()}
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["step"] == step
    for iou_type in ("bbox", "segm"):
        for name, value in metrics[iou_type]["per_class"].items():
            tag = f"eval_per_class/{iou_type}_AP/{name}"
            if value != value:  # NaN: no gt of the class in the split, no scalar
                assert tag not in summaries
                continue
            plugin, tensor = summaries[tag][step]
            assert plugin == "scalars" and abs(float(tensor) - value) < 1e-6
    images = {tag: entries for tag, entries in summaries.items() if tag.startswith("eval_images/")}
    assert sorted(images) == [f"eval_images/{i}" for i in (1, 2, 3, 4)]  # the first val images, by id
    for entries in images.values():
        plugin, (width, height, png) = entries[step]
        assert plugin == "images"
        with Image.open(io.BytesIO(png)) as picture:  # the original image (64 px), detections drawn on it
            assert picture.size == (int(width), int(height)) == (64, 64) and picture.mode == "RGB"
