import os
import re

import numpy as np
import pytest
import tensorflow as tf

import tfrcnn
from tfrcnn.config import save_config
from tfrcnn.training import checkpoints
from tfrcnn.training.optimizer import build_optimizer

TINY = os.path.join(os.path.dirname(__file__), "..", "modeling", "configs", "mask_rcnn_r18_tiny.yaml")


def test_load_model_restores_the_newest_checkpoint(tmp_path):
    cfg = tfrcnn.load_config(TINY)
    model = tfrcnn.build_model(cfg)
    optimizer = build_optimizer(cfg, steps_per_epoch=10, model=model)
    optimizer.build(model.trainable_variables)
    manager = tf.train.CheckpointManager(checkpoints.run_checkpoint(model, optimizer), str(tmp_path), max_to_keep=2)
    save_config(cfg, tmp_path / checkpoints.CONFIG_NAME)
    manager.save(checkpoint_number=1)
    for v in model.trainable_variables:
        v.assign(v + 1.0)
    manager.save(checkpoint_number=2)
    restored, config, path = checkpoints.load_model(str(tmp_path))
    assert path.endswith("ckpt-2") and config == cfg
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    older, _, _ = checkpoints.load_model(str(tmp_path), checkpoint_path=str(tmp_path / "ckpt-1"))
    for a, b in zip(model.trainable_variables, older.trainable_variables):
        np.testing.assert_array_equal(b.numpy() + 1.0, a.numpy())
    # every variable is in the checkpoint: the model's and the optimizer's
    names = {n for n, _ in tf.train.list_variables(path)}
    assert sum(n.startswith("model/") for n in names) == len(model.variables)
    assert sum(n.startswith("optimizer/") for n in names) == len(optimizer.variables)


def test_optimizer_state_resumes(tmp_path):
    cfg = tfrcnn.load_config(TINY)
    model = tfrcnn.build_model(cfg)
    optimizer = build_optimizer(cfg, steps_per_epoch=10, model=model)
    optimizer.build(model.trainable_variables)
    optimizer.iterations.assign(17)
    optimizer.variables[-1].assign(tf.ones_like(optimizer.variables[-1]))
    path = checkpoints.run_checkpoint(model, optimizer).save(str(tmp_path / "ckpt"))
    model2 = tfrcnn.build_model(cfg)
    optimizer2 = build_optimizer(cfg, steps_per_epoch=10, model=model2)
    optimizer2.build(model2.trainable_variables)
    checkpoints.run_checkpoint(model2, optimizer2).restore(path).assert_consumed()
    assert int(optimizer2.iterations) == 17
    np.testing.assert_array_equal(optimizer2.variables[-1].numpy(), np.ones(optimizer2.variables[-1].shape))


def test_load_model_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml: no such file"):
        checkpoints.load_model(str(tmp_path))
    save_config(tfrcnn.load_config(TINY), tmp_path / checkpoints.CONFIG_NAME)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        checkpoints.load_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ckpt-7: no such checkpoint"):
        checkpoints.load_model(str(tmp_path), checkpoint_path=str(tmp_path / "ckpt-7"))


def test_a_damaged_checkpoint_names_its_file(tmp_path):
    cfg = tfrcnn.load_config(TINY)
    model = tfrcnn.build_model(cfg)
    path = checkpoints.run_checkpoint(model).save(str(tmp_path / "ckpt"))  # ckpt-1
    data, index = tmp_path / "ckpt-1.data-00000-of-00001", tmp_path / "ckpt-1.index"
    whole = data.read_bytes(), index.read_bytes()
    data.write_bytes(whole[0][: len(whole[0]) // 2])  # a copy cut short
    with pytest.raises(checkpoints.CheckpointError, match=re.escape(
            f"{path}: cannot read this checkpoint: Read less bytes than requested (ckpt-1.data-00000-of-00001 is "
            "truncated or corrupt")):
        checkpoints.restore(checkpoints.run_checkpoint(model), path, model_only=True)
    data.write_bytes(whole[0])
    index.write_bytes(whole[1][: len(whole[1]) // 2])
    with pytest.raises(checkpoints.CheckpointError, match=re.escape(f"{path}: cannot read this checkpoint: ") +
                       ".*sstable.*" + re.escape("(ckpt-1.index is truncated or corrupt")):
        checkpoints.restore(checkpoints.run_checkpoint(model), path, model_only=True)
    assert isinstance(checkpoints.CheckpointError("x"), OSError)  # scripts print it as one `error:` line
