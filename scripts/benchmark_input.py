"""Measures the input pipeline alone: training batches per second, exactly as `fit` would receive them.

    python scripts/benchmark_input.py --config_file configs/mask_rcnn_r50_fpn_1x_coco.yaml \
        --params_override data.train.tfrecord=data/coco/tfrecord/train-*.tfrecord --num_batches 100

It builds the training dataset of the config (decode, resize, flip, normalize, pad, mask crops), skips
`--warmup` batches (tf.data's autotuning and the first file reads), then times `--num_batches` more, and
prints images/s. Compare with the seconds per training step of the same config to see whether the input
could ever limit training.
"""
import time

from absl import app, flags

flags.DEFINE_string("config_file", "configs/mask_rcnn_r50_fpn_1x_coco.yaml", "Config file.")
flags.DEFINE_string("params_override", None, "Overrides as a.b=c,d.e=f.")
flags.DEFINE_string("split", "train", "Section of config.data to read: train, val or test.")
flags.DEFINE_integer("num_batches", 50, "Batches to time.", lower_bound=1)
flags.DEFINE_integer("warmup", 5, "Batches read before timing starts.", lower_bound=0)
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
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


if __name__ == "__main__":
    app.run(main)
