"""How long tfrcnn's convolutions alone take on this machine: a floor under its inference and training time.

Records every convolution of one inference (R50-FPN Mask R-CNN, batch 1, the benchmark's settings: score
threshold 0, so 1000 proposals and 100 detections) and of one training step (the benchmark's batch: 8 random
boxes), then runs each alone in TensorFlow at the recorded shapes, median of `--repeats`:
- inference: the forward kernel of every conv;
- training: the forward kernel of every conv, the kernel gradient of every trainable one, and the input
  gradient of every trainable one except those reading the last frozen stage's output (no gradient flows
  there; with frozen_stages 1 that is layer2_0's conv1 and downsample).
A conv's share of the model cannot take less than its kernels alone, so the sum is a floor under the model's
time with TensorFlow's kernels (the model also runs RoIAlign, NMS, the box head's matmuls, mask pasting).
The FLOPs printed are 2 · multiply-adds of the forward convs.

    python benchmarks/conv_floor.py [--image_size 1024] [--repeats 3]
"""
import argparse
import statistics
import time

import numpy as np
import tensorflow as tf

import keras

REPO_CONFIG = "configs/mask_rcnn_r50_fpn_1x_coco.yaml"


def record_convs(model, run):
    """Runs `run()` eagerly and returns one dict per convolution call: layer, trainable, shapes, stride, padding."""
    from keras.src.layers.convolutional.base_conv import BaseConv
    from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose

    calls = []
    patched = []
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, BaseConv):
            original = layer.convolution_op

            def op(inputs, kernel, layer=layer, original=original):
                calls.append(dict(name=layer.name, trainable=layer.trainable, transpose=False,
                                  input=tuple(inputs.shape), kernel=tuple(kernel.shape), strides=layer.strides,
                                  padding=getattr(layer, "pad", layer.padding)))  # PaddedConv2D: its pad
                return original(inputs, kernel)
            layer.convolution_op = op
            patched.append((layer, "convolution_op"))
        elif isinstance(layer, BaseConvTranspose):
            original = layer.call

            def call(inputs, layer=layer, original=original):
                calls.append(dict(name=layer.name, trainable=layer.trainable, transpose=True,
                                  input=tuple(inputs.shape), kernel=tuple(layer.kernel.shape), strides=layer.strides,
                                  padding=layer.padding))
                return original(inputs)
            layer.call = call
            patched.append((layer, "call"))
    tf.config.run_functions_eagerly(True)
    try:
        run()
    finally:
        tf.config.run_functions_eagerly(False)
        for layer, attr in patched:
            delattr(layer, attr)
    return calls


def conv_fn(call):
    """f(x, kernel) → y for one recorded call."""
    strides = call["strides"]
    if call["transpose"]:
        def f(x, k):
            n, h, w, _ = x.shape
            out = [n, h * strides[0], w * strides[1], k.shape[2]]
            return tf.nn.conv2d_transpose(x, k, out, strides, call["padding"].upper())
        return f
    pad = call["padding"]
    if isinstance(pad, int):
        padding = [[0, 0], [pad, pad], [pad, pad], [0, 0]] if pad else "VALID"
    else:
        padding = pad.upper()
    return lambda x, k: tf.nn.conv2d(x, k, strides, padding)


def median_time(fn, args, repeats):
    """Median seconds of fn(*args); one element of each output comes back (copying a whole map out would add
    its own time), which still needs the whole kernel."""
    probe = tf.function(lambda *a: [tf.reshape(t, [-1])[0] for t in tf.nest.flatten(fn(*a))])
    probe(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        [t.numpy() for t in probe(*args)]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def floor(calls, training, first_trainable, repeats):
    """(seconds, forward GFLOP) of the recorded convolutions' kernels run alone; `first_trainable`: name prefixes
    of the convs whose input needs no gradient."""
    total, flops = 0.0, 0.0
    cache = {}
    for call in calls:
        key = (call["input"], call["kernel"], call["strides"], str(call["padding"]), call["transpose"],
               training and call["trainable"], call["name"].startswith(first_trainable))
        if key not in cache:
            f = conv_fn(call)
            x = tf.random.normal(call["input"])
            k = tf.random.normal(call["kernel"]) * 0.01
            y_shape = f(x, k).shape
            kh, kw = call["kernel"][:2]
            cin = call["kernel"][3] if call["transpose"] else call["kernel"][2]
            spatial = np.prod(call["input"][:3]) if call["transpose"] else np.prod(y_shape[:3])
            out_c = call["kernel"][2] if call["transpose"] else call["kernel"][3]
            gflop = 2 * spatial * kh * kw * cin * out_c / 1e9
            seconds = median_time(f, (x, k), repeats)
            if training and call["trainable"]:
                dy = tf.random.normal(y_shape)
                wants_input = not call["name"].startswith(first_trainable)

                def backward(x, k, dy, f=f, wants_input=wants_input):
                    with tf.GradientTape() as tape:
                        tape.watch([x, k])
                        y = f(x, k)
                    return tape.gradient(y, [x, k] if wants_input else [k], output_gradients=dy)
                seconds += median_time(backward, (x, k, dy), repeats)
            cache[key] = (seconds, gflop)
        seconds, gflop = cache[key]
        total += seconds
        flops += gflop
    return total, flops


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", default=REPO_CONFIG)
    args = parser.parse_args()

    import tfrcnn
    from tfrcnn import structures
    from tfrcnn.export import DetectionModule
    from tfrcnn.training import build_optimizer

    s = args.image_size
    cfg = tfrcnn.load_config(args.config, f"data.img_scale=[{s},{s}],data.pad_size=[{s},{s}],test_cfg.rcnn.score_thr=0.0")
    model = tfrcnn.build_model(cfg, build_size=(s, s))
    rng = np.random.default_rng(0)
    module = DetectionModule(model, cfg, paste_masks=True)
    image = tf.constant(rng.integers(0, 256, (1, s, s, 3)), tf.uint8)
    inference = record_convs(model, lambda: module.detect(image))

    model.compile(optimizer=build_optimizer(cfg, steps_per_epoch=1000, model=model))
    y1, x1 = rng.uniform(0, s * 0.6, (2, 1, 8))
    h, w = rng.uniform(32, s * 0.4, (2, 1, 8))
    crop = cfg.data.mask_crop_size
    targets = {structures.GT_BOXES: tf.constant(np.stack([y1, x1, y1 + h, x1 + w], -1), tf.float32),
               structures.GT_CLASSES: tf.constant(rng.integers(1, 80, (1, 8)), tf.int32),
               structures.IMAGE_SIZE: tf.constant([[s, s]], tf.int32),
               structures.GT_MASKS: tf.constant(rng.uniform(size=(1, 8, crop, crop)) > 0.5, tf.float32)}
    images = tf.random.stateless_normal([1, s, s, 3], [0, 0])
    training = record_convs(model, lambda: model.train_on_batch(images, targets))
    block = f"layer{cfg.model.backbone.frozen_stages + 1}_0_"  # its conv1 and shortcut read the frozen output
    first_trainable = (f"{block}conv1", f"{block}downsample")

    keras.utils.set_random_seed(0)
    for name, calls, train in (("inference", inference, False), ("training step", training, True)):
        seconds, gflop = floor(calls, train, first_trainable, args.repeats)
        print(f"{name}: {len(calls)} convolutions, {gflop:.1f} GFLOP forward; their kernels alone take "
              f"{seconds:.2f} s{' (forward + backward)' if train else ''}", flush=True)


if __name__ == "__main__":
    main()
