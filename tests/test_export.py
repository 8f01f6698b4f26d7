"""SavedModel export: a fresh process that never imports tfrcnn serves the same detections as the Keras model."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import tfrcnn
from tfrcnn import export
from tfrcnn.inference import Transform
from tfrcnn.ops.masks import paste_masks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "modeling", "configs", "mask_rcnn_r18_tiny.yaml")
# A small static canvas keeps the test fast; score_thr 0 gives an untrained model detections; category ids that
# are not 1..N show the class → category id mapping.
OVERRIDES = ("data.img_scale=[128,128],data.pad_size=[128,128],test_cfg.rcnn.score_thr=0.0,"
             "data.category_ids=[3,17],data.classes=[box,o'ring]")
SIZES = [(90, 120), (64, 48)]  # (h, w): landscape and portrait, both resized into the 128² canvas

# Runs in a fresh interpreter: only TensorFlow, never tfrcnn (the SavedModel must hold everything).
SERVE = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    export_dir, data, out = sys.argv[1:]
    m = tf.saved_model.load(export_dir)
    assert "tfrcnn" not in sys.modules
    d = {name: open(f"{data}/{name}", "rb").read() for name in ("jpeg0", "jpeg1", "example0")}
    d["image0"] = np.load(f"{data}/image0.npy")
    results = {}
    def run(prefix, key, inputs):
        for name, value in m.signatures[key](inputs=inputs).items():
            results[prefix + name] = value.numpy()
    run("default/", "serving_default", tf.constant([d["jpeg0"]]))
    run("bytes/", "image_bytes", tf.constant([d["jpeg0"], d["jpeg1"]]))
    run("tensor/", "image_tensor", tf.constant(d["image0"][None]))
    run("example/", "tf_example", tf.constant([d["example0"]]))
    errors = []
    for key, bad in [("image_tensor", tf.zeros([1, 32, 32, 3], tf.float32)),
                     ("image_tensor", tf.zeros([32, 32, 3], tf.uint8)),
                     ("image_bytes", tf.constant(d["jpeg0"])),
                     ("serving_default", tf.zeros([1, 32, 32, 3], tf.float32)),
                     ("serving_default", tf.constant([[[d["jpeg0"]]]]))]:
        try:
            m.signatures[key](inputs=bad)
            errors.append("no error")
        except Exception as e:
            errors.append(str(e))
    results["errors"] = np.array(errors)
    results["num_variables"] = np.array(len(m.model_variables))
    np.savez(out, **results)
""")


def _image(h, w, seed):
    """A smooth uint8 RGB image with a bright rectangle, so that JPEG keeps it close."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    image = np.stack([x * 255 / w, y * 255 / h, np.full((h, w), 90.0)], -1)
    y1, x1 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    image[y1:y1 + h // 3, x1:x1 + w // 3] = [250, 240, 30]
    return image.astype(np.uint8)


def _reference(model, config, image):
    """The in-process Keras path: preprocess, model, boxes / scale clipped to the image, classes → category ids."""
    padded, image_size, scale = Transform(config.data).preprocess(tf.constant(image))
    out = {k: v.numpy() for k, v in model({"images": padded[None], "image_size": image_size[None]}).items()}
    h, w = image.shape[:2]
    sy, sx = scale.numpy()
    boxes = np.clip(out["detection_boxes"][0] / [sy, sx, sy, sx], 0, [h, w, h, w])
    classes = np.array([0, 3, 17])[out["detection_classes"][0]]
    return {"detection_boxes": boxes, "detection_scores": out["detection_scores"][0], "detection_classes": classes,
            "num_detections": out["num_detections"][0], "detection_masks": out["detection_masks"][0]}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    config = tfrcnn.load_config(TINY, OVERRIDES)
    model = tfrcnn.build_model(config)
    export_dir = str(tmp / "saved_model")
    keys = export.export_saved_model(model, config, export_dir, input_types=("image_bytes", "image_tensor",
                                                                           "tf_example"), paste_masks=True)
    images = [_image(h, w, i) for i, (h, w) in enumerate(SIZES)]
    jpegs = [tf.io.encode_jpeg(tf.constant(im), quality=95).numpy() for im in images]
    decoded = [tf.io.decode_image(j, channels=3, expand_animations=False).numpy() for j in jpegs]
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpegs[0]]))})).SerializeToString()
    data = tmp / "data"
    data.mkdir()
    for name, value in [("jpeg0", jpegs[0]), ("jpeg1", jpegs[1]), ("example0", example)]:
        (data / name).write_bytes(value)
    np.save(data / "image0.npy", decoded[0])
    script = tmp / "serve.py"
    script.write_text(SERVE)
    out = str(tmp / "out.npz")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    # both processes only import TensorFlow: run them side by side
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.Popen([cli, "show", "--dir", export_dir, "--all"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    proc = subprocess.run([sys.executable, str(script), export_dir, str(data), out], capture_output=True, text=True,
                          env=env, cwd=str(tmp))
    cli_out, cli_err = shown.communicate()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert shown.returncode == 0, cli_err[-2000:]
    served = dict(np.load(out, allow_pickle=True))
    return dict(model=model, config=config, export_dir=export_dir, keys=keys, decoded=decoded, served=served,
                saved_model_cli=cli_out)


def _served(served, prefix, b):
    return {k[len(prefix):]: v[b] for k, v in served.items() if k.startswith(prefix)}


def _assert_matches(got, want, atol=1e-4):
    n = int(want["num_detections"])
    assert n > 0 and int(got["num_detections"]) == n
    np.testing.assert_allclose(got["detection_boxes"], want["detection_boxes"], atol=atol)
    np.testing.assert_allclose(got["detection_scores"], want["detection_scores"], atol=atol)
    np.testing.assert_array_equal(got["detection_classes"], want["detection_classes"])
    np.testing.assert_allclose(got["detection_masks"], want["detection_masks"], atol=atol)


def test_serving_parity_in_fresh_process(exported):
    served, model, config = exported["served"], exported["model"], exported["config"]
    assert int(served["num_variables"]) == len(model.variables)
    want0 = _reference(model, config, exported["decoded"][0])
    for prefix in ("default/", "bytes/", "tensor/", "example/"):
        _assert_matches(_served(served, prefix, 0), want0)
    # a batch of two sizes: each image is preprocessed and mapped back on its own
    _assert_matches(_served(served, "bytes/", 1), _reference(model, config, exported["decoded"][1]))
    # image_info: [[orig h, w], [resized h, w], [y, x scale], [0, 0]]; 90x120 → 96x128 in the 128² canvas
    np.testing.assert_allclose(served["bytes/image_info"][0], [[90, 120], [96, 128], [96 / 90, 128 / 120], [0, 0]],
                               rtol=1e-6)
    np.testing.assert_allclose(served["bytes/image_info"][1], [[64, 48], [128, 96], [2, 2], [0, 0]], rtol=1e-6)


def test_category_ids_and_label_map(exported):
    served, export_dir = exported["served"], exported["export_dir"]
    classes = np.concatenate([served["bytes/detection_classes"].ravel(), served["tensor/detection_classes"].ravel()])
    assert set(classes.tolist()) <= {0, 3, 17} and set(classes.tolist()) & {3, 17}
    num = served["bytes/num_detections"]
    for b, n in enumerate(num):  # padding rows stay 0
        assert (served["bytes/detection_classes"][b, n:] == 0).all()
    with open(os.path.join(export_dir, "label_map.json")) as f:
        assert json.load(f) == {"3": "box", "17": "o'ring"}
    with open(os.path.join(export_dir, "label_map.pbtxt")) as f:
        assert f.read() == "item {\n  id: 3\n  name: 'box'\n}\nitem {\n  id: 17\n  name: 'o\\'ring'\n}\n"
    assert tfrcnn.load_config(os.path.join(export_dir, "config.yaml")) == exported["config"]


def test_pasted_masks(exported):
    served = exported["served"]
    masks, boxes = served["bytes/detection_masks"], served["bytes/detection_boxes"]
    pasted = served["bytes/detection_masks_image"]
    assert pasted.dtype == np.uint8 and pasted.shape == (2, 20, 90, 120)  # the batch's largest h and w
    for b, (h, w) in enumerate(SIZES):
        want = paste_masks(masks[b:b + 1], boxes[b:b + 1], (h, w), mode="mmdet", threshold=0.5).numpy()[0]
        np.testing.assert_array_equal(pasted[b, :, :h, :w], want)
        assert not pasted[b, :, h:].any() and not pasted[b, :, :, w:].any()
    assert pasted[0].any()
    assert served["tensor/detection_masks_image"].shape == (1, 20, 90, 120)


def test_wrong_inputs_raise_clear_errors(exported):
    dtype_error, rank_error, bytes_error, default_dtype_error, default_rank_error = exported["served"]["errors"]
    assert "uint8" in dtype_error and "float" in dtype_error
    assert "inputs must be uint8 [batch, height, width, 3]" in rank_error and "[32 32 3]" in rank_error
    assert "inputs must be a string [batch]" in bytes_error
    # serving_default is image_bytes here: a float32 image and a rank-3 string tensor are both rejected
    assert "string" in default_dtype_error and "float" in default_dtype_error
    assert "image_bytes: inputs must be a string [batch]" in default_rank_error and "[1 1 1]" in default_rank_error


def test_saved_model_cli_lists_signatures(exported):
    shown = exported["saved_model_cli"]  # `saved_model_cli show --dir <export_dir> --all`
    for key in exported["keys"]:
        assert f"signature_def['{key}']" in shown
    for text in ("inputs['inputs'] tensor_info", "dtype: DT_UINT8", "shape: (-1, -1, -1, 3)", "dtype: DT_STRING",
                 "outputs['detection_boxes']", "outputs['detection_masks_image']", "outputs['image_info']"):
        assert text in shown


def test_python_api_matches_keras(exported):
    model, config, image = exported["model"], exported["config"], exported["decoded"][1]
    module = export.DetectionModule(model, config)
    got = {k: v.numpy()[0] for k, v in module.detect(image[None]).items()}
    assert "detection_masks_image" not in got
    _assert_matches(got, _reference(model, config, image))
    faster = dataclasses.replace(config, model=dataclasses.replace(config.model, type="FasterRCNN"))
    with pytest.raises(ValueError, match="paste_masks needs a Mask R-CNN"):
        export.DetectionModule(model, faster, paste_masks=True)
    with pytest.raises(ValueError, match="input types must be among"):
        export.signatures(module, ["jpeg"])


def test_size_divisor_padding_and_torchvision_paste(exported):
    """data.test_padding 'size_divisor': each image runs at its own padded size (no static canvas); masks pasted as
    torchvision pastes them with test_cfg.rcnn.mask_paste 'torchvision'."""
    model, image = exported["model"], exported["decoded"][0]
    config = tfrcnn.load_config(TINY, "data.test_padding=size_divisor,test_cfg.rcnn.mask_paste=torchvision," + OVERRIDES)
    padded, _, _ = Transform(config.data).preprocess(tf.constant(image))
    assert padded.shape == (96, 128, 3)  # 90x120 resized to 96x128, already a multiple of 32
    module = export.DetectionModule(model, config, paste_masks=True)
    got = {k: v.numpy()[0] for k, v in module.detect(image[None]).items()}
    _assert_matches(got, _reference(model, config, image))
    want = paste_masks(got["detection_masks"][None], got["detection_boxes"][None], image.shape[:2], mode="torchvision",
                       threshold=0.5, strict=True).numpy()[0]
    np.testing.assert_array_equal(got["detection_masks_image"], want)
    # a batch of two sizes: padded together to the larger (128 x 128), each answered in its own pixels
    jpegs = tf.constant([tf.io.encode_jpeg(tf.constant(im)).numpy() for im in exported["decoded"]])
    out = module.detect_bytes(jpegs)
    np.testing.assert_array_equal(out["image_info"].numpy()[:, 0], SIZES)
    assert (out["num_detections"].numpy() > 0).all()


def _op_dtypes(function):
    """{(op type, T)} of a traced function's graph and of every function it calls."""
    graph = function.graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return {(n.op, tf.dtypes.as_dtype(n.attr["T"].type).name) for n in nodes if n.attr["T"].type}


def test_bfloat16_export_keeps_the_signatures_and_computes_in_bfloat16(exported, tmp_path):
    """runtime.mixed_precision mixed_bfloat16 (export_saved_model.py --precision mixed_bfloat16): the same
    signatures, inputs and outputs as the float32 export, convolutions in bfloat16, boxes and scores in float32."""
    config = tfrcnn.load_config(TINY, [OVERRIDES, "runtime.mixed_precision=mixed_bfloat16"])
    model = tfrcnn.build_model(config)
    model.set_weights(exported["model"].get_weights())  # float32 variables under either policy
    export_dir = str(tmp_path / "bf16")
    assert export.export_saved_model(model, config, export_dir, input_types=("image_bytes", "image_tensor",
                                                                           "tf_example"), paste_masks=True) == \
        exported["keys"]
    served, reference = tf.saved_model.load(export_dir), tf.saved_model.load(exported["export_dir"])
    for key in exported["keys"]:
        ours, theirs = served.signatures[key], reference.signatures[key]
        assert ours.structured_input_signature == theirs.structured_input_signature
        assert ours.structured_outputs.keys() == theirs.structured_outputs.keys()
        assert {k: v.dtype for k, v in ours.structured_outputs.items()} == \
            {k: v.dtype for k, v in theirs.structured_outputs.items()}
    ops = _op_dtypes(served.signatures["image_tensor"])
    assert any(dtype == "bfloat16" and "Conv2D" in op for op, dtype in ops), sorted(ops)
    assert not any(dtype == "bfloat16" and "Conv2D" in op for op, dtype in _op_dtypes(reference.signatures[
        "image_tensor"]))
    out = served.signatures["image_tensor"](inputs=tf.constant(exported["decoded"][0][None]))
    assert out["detection_boxes"].dtype == out["detection_scores"].dtype == tf.float32
    assert tfrcnn.load_config(os.path.join(export_dir, "config.yaml")).runtime.mixed_precision == "mixed_bfloat16"
