"""Tests of tfrcnn.training.schedule: MMDetection's step policy with linear / constant warmup."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tfrcnn.config import LrCfg, load_config
from tfrcnn.training.schedule import WarmupStepSchedule, build_schedule

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
# The 1x schedule with 100 iterations per epoch: lr 0.02, warmup 500 iterations from ratio 0.001, steps
# after epochs 8 and 11 (iterations 800 and 1100).
ONE_X = dict(base_lr=0.02, steps_per_epoch=100, step_epochs=[8, 11], gamma=0.1, warmup_iters=500, warmup_ratio=0.001)


def lr_at(schedule, it):
    return float(schedule(tf.constant(it, tf.int64)))


@pytest.mark.parametrize("it,expected", [
    # k = (1 - 0 / 500) * (1 - 0.001) = 0.999; lr = 0.02 * (1 - 0.999) = 0.02 * 0.001
    (0, 2e-5),
    # k = (1 - 250 / 500) * 0.999 = 0.4995; lr = 0.02 * 0.5005
    (250, 0.01001),
    # k = (1 - 499 / 500) * 0.999 = 0.001998; lr = 0.02 * 0.998002
    (499, 0.01996004),
    # warmup over: the regular lr
    (500, 0.02),
    # last iteration of epoch 7, first of epoch 8: 0.02, then 0.02 * 0.1
    (799, 0.02), (800, 0.002),
    # last iteration of epoch 10, first of epoch 11: 0.002, then 0.02 * 0.1 ** 2
    (1099, 0.002), (1100, 0.0002), (5000, 0.0002),
])
def test_linear_warmup_then_steps(it, expected):
    assert lr_at(WarmupStepSchedule(warmup="linear", **ONE_X), it) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("it,expected", [(0, 2e-5), (499, 2e-5), (500, 0.02), (800, 0.002)])
def test_constant_warmup(it, expected):
    # lr = 0.02 * 0.001 throughout the warmup
    assert lr_at(WarmupStepSchedule(warmup="constant", **ONE_X), it) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("it,expected", [(0, 0.02), (799, 0.02), (800, 0.002), (1100, 0.0002)])
def test_no_warmup(it, expected):
    assert lr_at(WarmupStepSchedule(warmup=None, **ONE_X), it) == pytest.approx(expected, rel=1e-6)


def test_warmup_scales_the_stepped_lr():
    # As mmcv: the warmup multiplies the regular lr, which may already have stepped (10 iterations/epoch,
    # step after epoch 2 = iteration 20). it 30: regular 0.02 * 0.1; k = (1 - 30/500) * 0.999 = 0.93906;
    # lr = 0.002 * (1 - 0.93906) = 0.002 * 0.06094
    s = WarmupStepSchedule(0.02, 10, [2], 0.1, "linear", 500, 0.001)
    assert lr_at(s, 30) == pytest.approx(0.002 * 0.06094, rel=1e-6)


def test_works_inside_tf_function_and_with_an_int32_step():
    s = WarmupStepSchedule(warmup="linear", **ONE_X)
    f = tf.function(lambda it: s(it))
    assert float(f(tf.constant(800, tf.int32))) == pytest.approx(0.002, rel=1e-6)
    assert s(tf.constant(0)).dtype == tf.float32


def test_get_config_round_trips():
    s = WarmupStepSchedule(warmup="constant", **ONE_X)
    config = s.get_config()
    assert config == dict(ONE_X, warmup="constant")
    back = WarmupStepSchedule.from_config(config)
    assert back.get_config() == config
    # Keras' own serialization, as an optimizer's get_config uses it.
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
    assert isinstance(again, WarmupStepSchedule) and again.get_config() == config
    for it in (0, 499, 500, 1100):
        assert lr_at(again, it) == lr_at(s, it)


def test_build_schedule_from_config():
    cfg = load_config(os.path.join(CONFIGS, "mask_rcnn_r50_fpn_2x_coco.yaml"))
    s = build_schedule(cfg.lr_config, cfg.optimizer.lr, steps_per_epoch=7330)
    assert s.get_config() == dict(base_lr=0.02, steps_per_epoch=7330, step_epochs=[16, 22], gamma=0.1,
                                  warmup="linear", warmup_iters=500, warmup_ratio=0.001)
    assert lr_at(s, 16 * 7330 - 1) == pytest.approx(0.02) and lr_at(s, 16 * 7330) == pytest.approx(0.002)


@pytest.mark.parametrize("kwargs,message", [
    (dict(warmup="exp"), "warmup must be one of"),
    (dict(steps_per_epoch=0), "steps_per_epoch must be >= 1"),
    (dict(warmup_iters=0), "warmup_iters must be >= 1"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WarmupStepSchedule(**{**ONE_X, "warmup": "linear", **kwargs})


@settings(max_examples=15, deadline=None)
@given(it=st.integers(0, 3000), spe=st.integers(1, 300), warmup=st.sampled_from([None, "linear", "constant"]))
def test_matches_mmcv_formula(it, spe, warmup):
    # mmcv's StepLrUpdaterHook(by_epoch=True) + warmup, in plain Python floats.
    base, steps, gamma, wi, wr = 0.02, [8, 11], 0.1, 500, 0.001
    regular = base * gamma ** sum(it // spe >= e for e in steps)
    if warmup is None or it >= wi:
        expected = regular
    elif warmup == "linear":
        expected = regular * (1 - (1 - it / wi) * (1 - wr))
    else:
        expected = regular * wr
    s = build_schedule(LrCfg(warmup=warmup, step=tuple(steps)), base, spe)
    assert np.isclose(lr_at(s, it), expected, rtol=1e-6, atol=0)
