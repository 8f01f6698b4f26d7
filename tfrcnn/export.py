"""Inference on raw images, in process or as a TensorFlow SavedModel.

`DetectionModule` wraps a detector between `tfrcnn.inference`'s `Transform` (the preprocessing of evaluation:
keep-ratio resize, normalize, pad to the config's static canvas or, with data.test_padding 'size_divisor', to the
batch's largest image rounded up to size_divisor) and `Postprocessor` (detections mapped back to each ORIGINAL
image: boxes in original pixels, classes as the dataset's category ids). `export_saved_model` saves it with Model
Garden's serving signatures (`image_tensor`, `image_bytes`, `tf_example`), a label map and the resolved config:

    module = DetectionModule(model, config)
    out = module.detect(images_uint8)            # [B, H, W, 3]
    out = module.detect_bytes(jpeg_or_png_strings)  # [B] encoded images, sizes may differ

Outputs (a dict of tensors; K = test_cfg.rcnn.max_per_img):
  detection_boxes    float32 [B, K, 4] [y1, x1, y2, x2] in ORIGINAL image pixels, clipped to the image (Model
                     Garden's are in resized-image pixels; divide by image_info[:, 2] there, not here).
  detection_scores   float32 [B, K].
  detection_classes  int32 [B, K]: the dataset's category ids (label_map.json); padding rows are 0.
  num_detections     int32 [B]: rows past it are padding (zero boxes, scores and classes).
  image_info         float32 [B, 4, 2]: [[orig_h, orig_w], [scaled_h, scaled_w], [y_scale, x_scale], [0, 0]].
  detection_masks    float32 [B, K, 28, 28] (Mask R-CNN): probabilities in each box's frame, as Model Garden.
  detection_masks_image  uint8 [B, K, H, W] 0/1 (with paste_masks=True): masks pasted into the original image
                     as test_cfg.rcnn.mask_paste says, thresholded at test_cfg.rcnn.mask_thr_binary. A batch of
                     images of different sizes (image_bytes, tf_example) is pasted at the batch's largest height and
                     width: image b's masks fill [:orig_h_b, :orig_w_b] and are 0 beyond.
"""
import json
import os

import tensorflow as tf

from tfrcnn.config import CONFIG_NAME, save_config
from tfrcnn.inference import Postprocessor, Transform

INPUT_TYPES = ("image_tensor", "image_bytes", "tf_example")
IMAGE_KEY = "image/encoded"  # Model Garden's (and tfrcnn.data.tfrecord's) key of the encoded image
LABEL_MAP_JSON, LABEL_MAP_PBTXT = "label_map.json", "label_map.pbtxt"

_IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name="inputs")
_STRINGS_SPEC = tf.TensorSpec([None], tf.string, name="inputs")
# One preprocessed, unpadded image [h, (w), 3]: images of a batch may differ in size until Transform.pad pads them.
_RAGGED_IMAGE = tf.RaggedTensorSpec([None, None, 3], tf.float32, ragged_rank=1)


class DetectionModule(tf.Module):
    """A detector and its config as a tf.Module: raw uint8 images in, detections in original pixels out.

    Args:
      model: a built FasterRCNN / MaskRCNN (`tfrcnn.build_model`, `tfrcnn.training.checkpoints.load_model`).
      config: its `tfrcnn.config.Config`; `data` gives the preprocessing and the category ids, `test_cfg` the
        mask threshold.
      paste_masks: also return `detection_masks_image` (Mask R-CNN only).
    """

    def __init__(self, model, config, paste_masks=False, name="detection_module"):
        super().__init__(name=name)
        if paste_masks and not config.model.with_mask:
            raise ValueError("DetectionModule: paste_masks needs a Mask R-CNN (config.model.with_mask)")
        # Not tracked: tf.saved_model.save would trace default signatures of every Keras layer (seconds each), and
        # Keras 3 layers do not expose their sublayers to TF's object graph anyway (see
        # tfrcnn.training.checkpoints). The variables are listed instead, so that the SavedModel holds every one
        # the traced functions capture.
        object.__setattr__(self, "model", model)
        self.model_variables = list(model.variables)
        self._paste = paste_masks
        self.transform = Transform(config.data)
        self.postprocess = Postprocessor.from_config(config)

    @property
    def label_map(self):
        """{category id: name} of the classes 1..N."""
        return self.postprocess.label_map

    @tf.function(input_signature=[_IMAGES_SPEC])
    def detect(self, images):
        """uint8 [B, H, W, 3] RGB images (one size per batch) → the outputs dict (see the module docstring)."""
        images = _checked(images, [None, None, None, 3],
                          "image_tensor: inputs must be uint8 [batch, height, width, 3]")

        def one(image):  # every image of the batch has one size, so the resized ones stack densely
            return self.transform.preprocess(image, pad=False)

        resized, image_size, scale = tf.map_fn(
            one, images, fn_output_signature=(tf.TensorSpec([None, None, 3], tf.float32), tf.int32, tf.float32))
        shape = tf.shape(images)
        original_size = tf.tile(shape[None, 1:3], [shape[0], 1])
        return self._detect(self.transform.pad(resized), image_size, scale, original_size)

    @tf.function(input_signature=[_STRINGS_SPEC])
    def detect_bytes(self, encoded):
        """string [B] encoded images (JPEG, PNG, BMP, first frame of a GIF; grayscale and RGBA become RGB),
        sizes may differ → the outputs dict."""
        encoded = _checked(encoded, [None], "image_bytes: inputs must be a string [batch] of encoded images")

        def one(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            resized, image_size, scale = self.transform.preprocess(image, pad=False)
            return tf.RaggedTensor.from_tensor(resized), image_size, scale, tf.shape(image)[:2]

        resized, image_size, scale, original_size = tf.map_fn(
            one, encoded, fn_output_signature=(_RAGGED_IMAGE, tf.int32, tf.float32, tf.int32))
        return self._detect(self.transform.pad(resized), image_size, scale, original_size)

    @tf.function(input_signature=[_STRINGS_SPEC])
    def detect_examples(self, serialized):
        """string [B] serialized tf.train.Examples holding `image/encoded` → the outputs dict."""
        serialized = _checked(serialized, [None],
                              "tf_example: inputs must be a string [batch] of serialized tf.train.Examples")
        features = tf.io.parse_example(serialized, {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)})
        return self.detect_bytes(features[IMAGE_KEY])

    def _detect(self, padded, image_size, scale, original_size):
        """The model on preprocessed images, its outputs mapped to the original images.

        padded float32 [B, Hp, Wp, 3]; image_size int32 [B, 2] resized (h, w); scale float32 [B, 2] resized /
        original (y, x); original_size int32 [B, 2] (h, w).
        """
        outputs = self.model({"images": padded, "image_size": image_size}, training=False)
        return self.postprocess(outputs, image_size, scale, original_size, paste=self._paste)


def _checked(x, shape, message):
    """x, after a run-time check of its shape: signatures of a loaded SavedModel check dtypes but not shapes.

    shape: the expected shape, None for any size. The check pads the run-time shape with -1s because grappler
    folds tf.rank (and any static dimension) of the traced input to a constant.
    """
    actual = tf.concat([tf.shape(x), tf.fill([2], -1)], 0)
    rank, last = len(shape), shape[-1]
    fits_last = tf.greater_equal(actual[rank - 1], 0) if last is None else tf.equal(actual[rank - 1], last)
    ok = tf.logical_and(tf.equal(actual[rank], -1), fits_last)  # rank <= len(shape), and rank >= len(shape)
    with tf.control_dependencies([tf.debugging.Assert(ok, [message + "; got shape", tf.shape(x)], summarize=8)]):
        return tf.identity(x)


def signatures(module, input_types=("image_tensor",)):
    """{signature key: concrete function}: the first input type is also `serving_default`."""
    functions = {"image_tensor": module.detect, "image_bytes": module.detect_bytes,
                 "tf_example": module.detect_examples}
    input_types = list(input_types)
    unknown = [t for t in input_types if t not in functions]
    if not input_types or unknown:
        raise ValueError(f"input types must be among {list(INPUT_TYPES)}, got {input_types}")
    result = {t: functions[t].get_concrete_function() for t in dict.fromkeys(input_types)}
    return {"serving_default": result[input_types[0]], **result}


def label_map_pbtxt(label_map):
    """TF Object Detection API's label map text: `item { id: 1 name: 'x' }` per category."""
    def quoted(name):
        return "'" + str(name).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "".join(f"item {{\n  id: {i}\n  name: {quoted(n)}\n}}\n" for i, n in label_map.items())


def export_saved_model(model, config, export_dir, input_types=("image_tensor",), paste_masks=False):
    """Saves `DetectionModule(model, config, paste_masks)` as a SavedModel in export_dir.

    Signatures: `serving_default` (the first of input_types) and each input type under its own name:
    `image_tensor` (uint8 [B, H, W, 3]), `image_bytes` (string [B] encoded images), `tf_example` (string [B]
    serialized tf.train.Examples with `image/encoded`); the input is named `inputs`, the outputs are the
    DetectionModule's. Beside the SavedModel: label_map.json ({"<category id>": "<name>"}), label_map.pbtxt
    and the resolved config.yaml. Returns the signature keys.
    """
    module = DetectionModule(model, config, paste_masks=paste_masks)
    sigs = signatures(module, input_types)
    tf.io.gfile.makedirs(export_dir)
    tf.saved_model.save(module, export_dir, signatures=sigs)
    label_map = module.label_map
    with tf.io.gfile.GFile(os.path.join(export_dir, LABEL_MAP_JSON), "w") as f:
        json.dump({str(i): n for i, n in label_map.items()}, f, indent=2)
    with tf.io.gfile.GFile(os.path.join(export_dir, LABEL_MAP_PBTXT), "w") as f:
        f.write(label_map_pbtxt(label_map))
    save_config(config, os.path.join(export_dir, CONFIG_NAME))
    return list(sigs)
