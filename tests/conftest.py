"""Test-wide setup.

torch (a test-only reference) must be imported before TensorFlow: the CUDA build of torch 2.14 segfaults when
it loads into a process that has already loaded TensorFlow 2.21, while the other order works.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import torch  # noqa: E402,F401  (import order matters, see above)
import torchvision  # noqa: E402,F401


import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same Python, NumPy and TensorFlow/Keras random state: initial weights and
    random draws repeat from run to run, so a test that passes keeps passing."""
    keras.utils.set_random_seed(1234)


@pytest.fixture
def restores_op_determinism():
    """TensorFlow's op determinism is process-wide: whatever the test switches, it is as before afterwards."""
    from tensorflow.python.framework import config as tf_config
    was = tf_config.is_op_determinism_enabled()
    yield tf_config
    (tf_config.enable_op_determinism if was else tf_config.disable_op_determinism)()
