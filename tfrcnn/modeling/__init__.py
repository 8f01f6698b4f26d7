"""Keras layers and models: ResNet, FPN, RPN head, RoI heads, and the detectors `build_model` makes."""
import keras
import tensorflow as tf

from tfrcnn.hardware import warn_if_bfloat16_is_emulated


def build_model(config, build_size=(128, 128)):
    """The detector a config describes, with its weights created.

    Args:
      config: a `tfrcnn.config.Config` (see `tfrcnn.load_config`). `model.type` picks FasterRCNN or MaskRCNN;
        `runtime.mixed_precision` sets the model's dtype policy (the global Keras policy is left as it was).
      build_size: (h, w) of the zero image whose forward pass creates the weights; weight shapes do not depend on it.
    Returns:
      a built `FasterRCNN` or `MaskRCNN` (`keras.Model`).
    """
    from tfrcnn.modeling.detectors import FasterRCNN, MaskRCNN

    cls = MaskRCNN if config.model.with_mask else FasterRCNN
    warn_if_bfloat16_is_emulated(config.runtime.mixed_precision, bool(tf.config.list_logical_devices("GPU")))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.runtime.mixed_precision or "float32")
    try:
        model = cls(config, name=config.model.type.lower())
    finally:
        keras.config.set_dtype_policy(previous)
    model(tf.zeros([1, *build_size, 3], tf.float32))
    return model
