r"""Measures the input pipeline alone: training batches per second, exactly as `fit` would receive them.

    python scripts/benchmark_input.py --config_file configs/mask_rcnn_r50_fpn_1x_coco.yaml \
        --params_override data.train.tfrecord=data/coco/tfrecord/train-*.tfrecord --num_batches 100

It builds the training dataset of the config (decode, resize, flip, normalize, pad, mask crops), skips
`--warmup` batches (tf.data's autotuning and the first file reads), then times `--num_batches` more, and
prints images/s. With `--train_steps N` it also builds the config's model and times N training steps on
batches already in memory (after one untimed step that traces the graph), and prints which share of a step the
input pipeline would take if it ran serially, not overlapped by prefetching as in `fit`.
"""
import time

from absl import flags

import _cli

_cli.define_config_flags([_cli.R50_CONFIG], "Default: configs/mask_rcnn_r50_fpn_1x_coco.yaml.")
flags.DEFINE_enum("split", "train", ["train", "val", "test"], "Section of config.data to read (always with the "
                  "training pipeline: flips, shuffling, repeat).")
flags.DEFINE_integer("num_batches", 50, "Batches to time.", lower_bound=1)
flags.DEFINE_integer("warmup", 5, "Batches read before timing starts.", lower_bound=0)
flags.DEFINE_integer("train_steps", 0, "Also time this many training steps of the config's model (0: none).",
                     lower_bound=0)
FLAGS = flags.FLAGS


def main(_):
    _cli.check_config_files(FLAGS.config_file)  # before TensorFlow loads
    from tfrcnn.config import load_config
    from tfrcnn.data.pipeline import build_dataset
    config = load_config(FLAGS.config_file, FLAGS.params_override)
    dataset = build_dataset(config, FLAGS.split, training=True).repeat()
    batches = iter(dataset)
    for _ in range(FLAGS.warmup):
        next(batches)
    start = time.perf_counter()
    images = 0
    for _ in range(FLAGS.num_batches):
        images += int(next(batches)[0].shape[0])
    seconds = time.perf_counter() - start
    height, width = config.data.padded_size()
    print(f"{images / seconds:.1f} images/s ({seconds / FLAGS.num_batches * 1000:.1f} ms per batch of "
          f"{config.data.samples_per_gpu}, padded {height}x{width}, {FLAGS.num_batches} batches)")
    if FLAGS.train_steps:
        step = _train_step_seconds(config, [next(batches) for _ in range(FLAGS.train_steps + 1)])
        per_batch = seconds / FLAGS.num_batches
        print(f"training step: {step:.2f} s; the input pipeline takes {per_batch:.3f} s per batch, "
              f"{100 * per_batch / step:.1f}% of a step")


def _train_step_seconds(config, batches):
    """Mean seconds of a training step of the config's model, on batches in memory (the first traces)."""
    import tfrcnn
    from tfrcnn.training.optimizer import build_optimizer
    height, width = config.data.padded_size()
    model = tfrcnn.build_model(config, build_size=(height, width))
    model.compile(optimizer=build_optimizer(config, steps_per_epoch=1000, model=model))
    model.train_on_batch(*batches[0])
    start = time.perf_counter()
    for images, targets in batches[1:]:
        model.train_on_batch(images, targets)
    return (time.perf_counter() - start) / (len(batches) - 1)


if __name__ == "__main__":
    _cli.run(main)
