"""scripts/train.py --strategy multi_worker_mirrored as users run it: two real processes on 127.0.0.1, each with
its TF_CONFIG (worker 0 is the chief), resuming a run from its checkpoint (the commands of docs/training.md).

One run, kept small: TensorFlow's start-up and the tracing of the train step are most of its time.
"""
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

import tfrcnn
from tfrcnn.config import save_config
from tfrcnn.data.shapes import generate_shapes_dataset
from tfrcnn.training import build_optimizer, checkpoints
from localhost import free_ports

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(REPO, "scripts", "train.py")
CONFIG = os.path.join(REPO, "tests", "modeling", "configs", "mask_rcnn_r18_tiny.yaml")
TIMEOUT = 300  # seconds for the run; a hung collective fails the test instead of the CI job


def overrides(shapes):
    # 8 images, 1 per replica: a global batch of 2, 4 steps an epoch; one epoch, a checkpoint every 2 steps
    values = {"data.train.tfrecord": shapes.train_tfrecords, "data.img_scale": "[64,64]", "data.pad_size": "[64,64]",
              "data.samples_per_gpu": 1, "data.category_ids": "[1,2,3]", "data.classes": "null",
              "model.roi_head.bbox_head.num_classes": 3, "model.roi_head.mask_head.num_classes": 3,
              "runner.max_epochs": 1, "checkpoint_config.by_epoch": "false", "checkpoint_config.interval": 2,
              "log_config.interval": 1}
    return ",".join(f"{k}={v}" for k, v in values.items())


def write_step_2_checkpoint(config, model_dir):
    """What a run stopped at step 2 leaves: config.yaml and ckpt-2 (model and optimizer)."""
    model = tfrcnn.build_model(config, build_size=config.data.padded_size())
    optimizer = build_optimizer(config, steps_per_epoch=4, model=model)
    optimizer.build(model.trainable_variables)
    optimizer.iterations.assign(2)
    save_config(config, os.path.join(model_dir, checkpoints.CONFIG_NAME))
    tf.train.CheckpointManager(checkpoints.run_checkpoint(model, optimizer), model_dir, max_to_keep=5,
                               checkpoint_name="ckpt").save(checkpoint_number=2)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes_dataset(str(tmp_path_factory.mktemp("shapes")), num_train=8, num_val=2, image_size=64,
                                   num_shards=1)


def test_two_workers_on_localhost_resume_and_train_one_model(shapes, tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    write_step_2_checkpoint(tfrcnn.load_config(CONFIG, overrides(shapes)), str(model_dir))
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    temp = {i: tmp_path / f"tmp{i}" for i in range(2)}  # each worker's TMPDIR: worker 1 saves there, then cleans up
    procs = []
    for i in range(2):
        temp[i].mkdir()
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1", TMPDIR=str(temp[i]),
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen([sys.executable, TRAIN, "--config_file", CONFIG, "--model_dir", str(model_dir),
                                       "--params_override", overrides(shapes), "--strategy", "multi_worker_mirrored"],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=TIMEOUT)
            outs.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (code, stdout, stderr) in enumerate(outs):
        assert code == 0, f"worker {i} exited with {code}:\n{stdout[-2000:]}\n{stderr[-3000:]}"
    chief, other = outs[0][1], outs[1][1]

    assert f"resumed from {model_dir / 'ckpt-2'} at step 2" in chief
    assert "2 replicas on 2 workers, global batch 2" in chief
    steps = [int(line.split()[1].split("/")[0]) for line in chief.splitlines() if line.startswith("step ")]
    assert steps == [3, 4]  # the global step went on from the checkpoint, logged once per step
    # check_in_sync all-gathered both workers' step, weights and momenta: they hold one model (up to rounding)
    assert "2 replicas agree on the weights at step 4" in chief
    assert (model_dir / "ckpt-4.index").exists() and (model_dir / "config.yaml").exists()
    assert checkpoints.latest_checkpoint(str(model_dir)) == str(model_dir / "ckpt-4")
    assert os.listdir(model_dir / "logs")

    # the other worker logs no progress and writes nothing that stays: its checkpoints went to its own
    # temporary directory, deleted at the end
    assert "worker 1: training; the chief writes" in other and "step " not in other
    assert os.listdir(temp[1]) == []
