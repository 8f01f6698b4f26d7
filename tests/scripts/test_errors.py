"""What the scripts print when TensorFlow fails on a bad file, and that they are quiet otherwise.

Each bad input (a truncated checkpoint, a full disk while saving one, a corrupt image, a damaged TFRecord shard,
TFRecords without the masks a Mask R-CNN config needs) is one stderr line `error: ...` naming the file, a
status other than 0, no traceback and no half-written file; `--verbose` shows the traceback. Real processes,
started WITHOUT TF_CPP_MIN_LOG_LEVEL (the scripts set it themselves), so that every one-line assertion also
checks that TensorFlow's own logs stay hidden. One tiny training run (a module fixture) is the quiet run and
the source of the checkpoints.
"""
import os
import re
import resource
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from tfrcnn.data.shapes import generate_shapes_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(REPO, "scripts")
CONFIG = os.path.join(REPO, "configs", "mask_rcnn_r18_fpn_shapes.yaml")
ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # conftest sets it for pytest
DATA = "ckpt-4.data-00000-of-00001"  # the trained run's checkpoint: 16 images / batch 4 = 4 steps


def _run(script, *args, preexec_fn=None):
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, script + ".py"), *map(str, args)], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=300, preexec_fn=preexec_fn)


def _one_error(out):
    """The process failed with exactly one stderr line, an `error:` line; returns it."""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), \
        f"status {out.returncode}, stderr:\n{out.stderr[-4000:]}"
    return lines[0]


def _overrides(shapes, **extra):
    values = {"data.train.tfrecord": shapes.train_tfrecords, "data.val.tfrecord": shapes.val_tfrecords,
              "data.val.ann_file": shapes.val_annotations, "data.img_scale": "[64,64]", "data.pad_size": "[64,64]",
              "runner.max_epochs": 1, "checkpoint_config.interval": 2, "checkpoint_config.max_keep": 1,
              "log_config.interval": 1, **extra}
    return ",".join(f"{k}={v}" for k, v in values.items())


def _train(shapes, model_dir, *args, preexec_fn=None, **extra):
    return _run("train", "--config_file", CONFIG, "--model_dir", model_dir, "--params_override",
                _overrides(shapes, **extra), *args, preexec_fn=preexec_fn)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes_dataset(str(tmp_path_factory.mktemp("shapes")), num_train=16, num_val=4, image_size=64,
                                   num_shards=1)


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """(model_dir, the finished process) of a 4-step train_and_eval run: ckpt-4 (the only one kept), metrics."""
    model_dir = tmp_path_factory.mktemp("trained") / "run"
    out = _train(shapes, model_dir, "--mode", "train_and_eval")
    assert out.returncode == 0, out.stderr[-4000:]
    assert sorted(p.name for p in model_dir.glob("ckpt-*")) == [DATA, "ckpt-4.index"]
    return model_dir, out


def _copy(model_dir, to):
    shutil.copytree(model_dir, to)
    return to


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_run_shows_none_of_tensorflows_logs(trained):
    _, out = trained
    text = out.stdout + out.stderr
    for noise in ("PredictCost", "cuInit", "oneDNN", "cpu_feature_guard", "absl::InitializeLog", "Warning",
                  "functional_saver"):
        assert noise not in text, f"{noise!r} in the output:\n{text[-4000:]}"
    # stdout has the progress lines and the table; stderr only tfrcnn's own lines (the evaluation's progress)
    foreign = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith(
        ("COCO evaluation: ", "tfrcnn"))]
    assert not foreign, out.stderr[-4000:]
    assert "step 4/4" in out.stdout and "per-class AP" in out.stdout


def _truncate(path):
    os.truncate(path, os.path.getsize(path) // 2)


@pytest.mark.parametrize("script", ["evaluate", "export_saved_model", "predict", "train"])
def test_truncated_checkpoint_is_one_error_line(trained, shapes, tmp_path, script):
    model_dir = _copy(trained[0], tmp_path / "run")
    _truncate(model_dir / DATA)
    before = _listing(model_dir)
    output = tmp_path / "output"
    if script == "evaluate":
        out = _run(script, "--model_dir", model_dir, "--output_dir", output)
    elif script == "export_saved_model":
        out = _run(script, "--model_dir", model_dir, "--export_dir", output)
    elif script == "predict":
        out = _run(script, "--model_dir", model_dir, "--image", shapes.val_image_dir, "--output_dir", output)
    else:  # resuming from it, for 4 more steps
        out = _train(shapes, model_dir, **{"runner.max_epochs": 2})
    assert _one_error(out) == (f"error: {model_dir / 'ckpt-4'}: cannot read this checkpoint: Read less bytes than "
                               f"requested ({DATA} is truncated or corrupt: a copy or a save that did not finish?)")
    assert not output.exists() and _listing(model_dir) == before


def test_full_disk_while_saving_keeps_the_previous_checkpoint_newest(trained, shapes, tmp_path):
    model_dir = _copy(trained[0], tmp_path / "run")
    record = (model_dir / "checkpoint").read_text()
    limit = 16 << 20  # bytes per file: the checkpoint's data file is larger, the logs and config.yaml are not
    # Python ignores SIGXFSZ: a write past the limit fails with EFBIG ("File too large"), as a full disk does.
    out = _train(shapes, model_dir, **{"runner.max_epochs": 2},
                 preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert _one_error(out) == (f"error: cannot save the checkpoint {model_dir / 'ckpt-6'}: File too large; the "
                               f"newest checkpoint is still {model_dir / 'ckpt-4'}")
    assert "step 6/8" in out.stdout  # it trained, then failed at the save
    assert sorted(p.name for p in model_dir.glob("ckpt-*")) == [DATA, "ckpt-4.index"]  # no ckpt-6*, no _temp
    assert not list(model_dir.glob("checkpoint.tmp*")) and (model_dir / "checkpoint").read_text() == record


def _rewrite_first_record(src_pattern, dst, change):
    """Copies the TFRecord shard `src_pattern` names to `dst` with change(tf.train.Example) applied to its first
    record; returns that record's (source_id, file name)."""
    (src,) = tf.io.gfile.glob(src_pattern)
    records = [r.numpy() for r in tf.data.TFRecordDataset(src)]
    example = tf.train.Example.FromString(records[0])
    change(example.features.feature)
    records[0] = example.SerializeToString()
    with tf.io.TFRecordWriter(str(dst)) as writer:
        for record in records:
            writer.write(record)
    feature = example.features.feature
    return (feature["image/source_id"].bytes_list.value[0].decode(),
            feature["image/filename"].bytes_list.value[0].decode())


def test_corrupt_image_names_the_image_and_its_shard(shapes, tmp_path):
    shard = tmp_path / "train-00000-of-00001.tfrecord"

    def cut_image(feature):  # the second half of the JPEG is lost, as in a download cut short
        encoded = feature["image/encoded"].bytes_list.value
        encoded[0] = encoded[0][:len(encoded[0]) // 2]

    source_id, file_name = _rewrite_first_record(shapes.train_tfrecords, shard, cut_image)
    model_dir = tmp_path / "run"
    out = _train(shapes, model_dir, **{"data.train.tfrecord": shard, "data.corrupt_images": "error"})
    assert _one_error(out) == (f"error: {shard}: corrupt image source_id {source_id} ({file_name}): it does not "
                               "decode (data.corrupt_images: error; with skip, each such image is left out and named)")
    assert not [p for p in model_dir.rglob("*") if "tmp" in p.name or "_temp" in p.name]
    for index in model_dir.glob("ckpt-*.index"):  # any checkpoint written before the image came up is whole
        assert index.with_name(index.name.replace(".index", ".data-00000-of-00001")).exists()


def test_damaged_shard_is_named(shapes, tmp_path):
    shard = tmp_path / "train-00000-of-00001.tfrecord"
    shutil.copy(tf.io.gfile.glob(shapes.train_tfrecords)[0], shard)
    _truncate(shard)
    out = _train(shapes, tmp_path / "run", **{"data.train.tfrecord": shard})
    error = _one_error(out)
    assert re.fullmatch(rf"error: {re.escape(str(shard))}: a damaged TFRecord shard, truncated record at \d+: Read "
                        r"less bytes than requested \(cut short, or not a TFRecord file: convert it again\)", error)
    assert not list((tmp_path / "run").glob("ckpt-*"))


@pytest.fixture(scope="module")
def shapes_without_masks(tmp_path_factory):
    """The shapes set converted without --include_masks."""
    return generate_shapes_dataset(str(tmp_path_factory.mktemp("no_masks")), num_train=4, num_val=4, image_size=64,
                                   num_shards=1, include_masks=False)


def test_mask_rcnn_on_records_without_masks_stops_before_training(shapes_without_masks, tmp_path):
    (shard,) = tf.io.gfile.glob(shapes_without_masks.train_tfrecords)
    out = _train(shapes_without_masks, tmp_path / "run")
    assert _one_error(out) == (
        f"error: {shard}: the model has a mask head but this shard has no masks (source_id 1: was it written "
        "without --include_masks?): convert the dataset again with scripts/create_coco_tfrecord.py "
        "--include_masks, or train a Faster R-CNN config")
    assert not (tmp_path / "run").exists()  # found before the run directory is written


def test_verbose_shows_the_traceback(shapes_without_masks, tmp_path):
    out = _train(shapes_without_masks, tmp_path / "run", "--verbose")
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 1 and "Traceback (most recent call last):" in out.stderr, out.stderr[-4000:]
    assert "in check_masks" in out.stderr  # where it was raised
    assert lines[-1].startswith("error: ") and "this shard has no masks" in lines[-1]
    assert sum(line.startswith("error: ") for line in lines) == 1


def test_any_other_tensorflow_error_is_the_first_line_of_its_message():
    """_cli.run's fallback for an OpError no call site reworded: TensorFlow's own message without its context."""
    code = "\n".join([
        "import sys", f"sys.path.insert(0, {SCRIPTS!r})", "import _cli",
        "class E: pass",
        "for message in sys.stdin.read().split('\\0'):",
        "    e = E(); e.message = message; print(_cli.tensorflow_error_line(e))"])
    messages = [
        "{{function_node __wrapped__IteratorGetNext_output_types_1_device_/job:localhost/replica:0/task:0/device:"
        "CPU:0}} corrupted record at 0 (Is this even a TFRecord file?) [Op:IteratorGetNext] name: ",
        "Graph execution error:\n\nDetected at node Assert/Assert defined at (most recent call last):\n  File "
        "\"x.py\", line 3, in f\n\nError in user-defined function passed to MapDataset:17 transformation with "
        "iterator: Iterator::Root::Prefetch::Map: assertion failed: [x]\n\t [[{{node Assert/Assert}}]]\n\t "
        "[[IteratorGetNext]] [Op:__inference_multi_step_on_iterator_19881]",
        "not an sstable (bad magic number)\nmore detail"]
    out = subprocess.run([sys.executable, "-c", code], input="\0".join(messages), env=ENV, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["corrupted record at 0 (Is this even a TFRecord file?)",
                                       "assertion failed: [x]", "not an sstable (bad magic number)"]
