r"""Measures a detector's speed: inference latency and throughput, training step time, peak memory; optionally side
by side with its torchvision twin.

    python scripts/benchmark.py --image_size 1024 --compare torchvision
    python scripts/benchmark.py --config_file configs/mask_rcnn_r18_fpn_shapes.yaml --image_size 192 \
        --data train --compare torchvision --modes train      # the main job's step against torchvision's
    python scripts/benchmark.py --modes inference --precision mixed_bfloat16 --xla --profile
    python scripts/benchmark.py --precision mixed_bfloat16 --compare_precision float32 --saved_model \
        --modes inference --modes train      # bfloat16 against float32, through exported SavedModels

Inference is the product's path: uint8 images through `DetectionModule` (resize, normalize, pad, the model, boxes
to original pixels, masks pasted into the image). Training is one optimizer step of `train_on_batch` on one batch
held in memory: `--data synthetic` (random pixels, 8 random gt boxes and masks per image) or `--data train` (the
first batch of the config's training split as the input pipeline delivers it: resized, flipped, padded). Both run
at a square `--image_size` (the config's img_scale and pad_size are set to it) with `test_cfg.rcnn.score_thr` 0 by
default, so the box and mask heads do their full work. Each measurement runs `--warmup` untimed times, then
`--repeats` timed times; the result is the median with min and max.

With `--compare torchvision` (torch and torchvision installed) a worker process runs the same measurement for
torchvision's model built from the same config (`benchmarks/torchvision_twin.py`: ResNet depth, frozen stages and
norm, FPN width, anchors, RPN and R-CNN sample and proposal counts, head widths, `min_size = max_size =
image_size`), on the same images and gt boxes. The two alternate A B A B, so that drifts of the machine hit both
alike, and every pair gives a ratio (tfrcnn / torchvision; below 1 means tfrcnn is faster). With
`--compare_precision P` the other side is tfrcnn itself at precision P, in this process (the ratio is --precision's
time over P's). `--saved_model` times inference through a SavedModel exported from the model (`image_tensor`, masks
pasted), as TF Serving runs it, instead of the in-process DetectionModule.

Output: one JSON line per mode on stdout (and appended to --output): times in seconds, images/s, peak memory,
ratios, the device, the CPU model and its bfloat16 units, precision and XLA setting, and the date.

This is the A/B driver: tfrcnn's side is benchmarks/tfrcnn_runner.py (in this process), torchvision's
benchmarks/torchvision_worker.py (a process of its own, which `TorchvisionClient` talks to).
"""
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys

from absl import flags

import _cli

BENCHMARKS = os.path.join(_cli.REPO, "benchmarks")
MODES = ["inference", "throughput", "train"]

_cli.define_config_flags([_cli.R50_CONFIG], "Default: configs/mask_rcnn_r50_fpn_1x_coco.yaml. The benchmark's "
                         "own settings (image size, score_thr, precision, XLA) are applied after --params_override.")
flags.DEFINE_integer("image_size", 1024, "Side of the square input (a multiple of 32).", lower_bound=64)
flags.DEFINE_multi_enum("modes", ["inference", "train"], MODES, "What to measure: inference (latency at batch 1), "
                        "throughput (inference at --throughput_batch), train (a training step at --train_batch).")
flags.DEFINE_integer("throughput_batch", 4, "Images per inference call in the throughput mode.", lower_bound=1)
flags.DEFINE_integer("train_batch", None, "Images per training step. Default: data.samples_per_gpu of the config.",
                     lower_bound=1)
flags.DEFINE_enum("data", "synthetic", ["synthetic", "train"], "The batch the timings run on: synthetic (random "
                  "pixels, 8 random gt boxes and masks per image) or train (the first batch of the config's training "
                  "split, through the input pipeline). torchvision gets the same images and gt.")
flags.DEFINE_integer("warmup", 2, "Untimed runs before the timed ones (the first traces the graphs).", lower_bound=1)
flags.DEFINE_integer("repeats", 5, "Timed runs; the result is their median (with min and max).", lower_bound=1)
flags.DEFINE_enum("device", "auto", ["auto", "cpu", "gpu"], "auto: the GPU when there is one, else the CPU.")
flags.DEFINE_enum("precision", "float32", _cli.PRECISIONS, "Keras dtype policy "
                  "(runtime.mixed_precision); torchvision runs under autocast to the same half type.")
flags.DEFINE_boolean("xla", False, "runtime.jit_compile: XLA for the dense part (backbone, FPN, RPN head) of "
                     "inference and training.")
flags.DEFINE_float("score_thr", 0.0, "test_cfg.rcnn.score_thr (torchvision's box_score_thresh).")
flags.DEFINE_enum("compare", "none", ["none", "torchvision"], "Also measure torchvision's twin of the config's "
                  "model (benchmarks/torchvision_twin.py), alternating with tfrcnn.")
flags.DEFINE_boolean("profile", False, "Also time the inference stages one by one (backbone, FPN, RPN head, "
                     "proposals, RoIAlign canvas, box RoIAlign, box head, detections, mask RoIAlign, mask head, "
                     "paste).")
flags.DEFINE_enum("compare_precision", None, _cli.PRECISIONS, "Also measure tfrcnn at this precision, alternating "
                  "with --precision (not with --compare torchvision). Default: none.")
flags.DEFINE_boolean("saved_model", False, "Time inference through an exported SavedModel (image_tensor signature, "
                     "masks pasted) instead of the in-process DetectionModule.")
flags.DEFINE_string("output", None, "Also append the JSON lines to this file. Default: stdout only.")
FLAGS = flags.FLAGS


def summary(seconds, images):
    """{median_s, min_s, max_s, images_per_s} of a list of timings of `images` images each."""
    median = statistics.median(seconds)
    return {"median_s": round(median, 4), "min_s": round(min(seconds), 4), "max_s": round(max(seconds), 4),
            "images_per_s": round(images / median, 3), "runs": len(seconds)}


def peak_rss_mb():
    """This process's peak resident memory (tfrcnn's, on a CPU; the torchvision worker reports its own)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)  # Linux reports KiB


class TorchvisionClient:
    """The worker process, asked one measurement at a time."""

    def __init__(self, gpu):
        """Starts the worker (before TensorFlow loads here: a child inherits its parent's peak RSS through fork
        and exec); `setup` then builds its model. gpu: let torch use a GPU when it has one."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if not gpu:
            env["CUDA_VISIBLE_DEVICES"] = ""
        self.gpu = gpu
        self.proc = subprocess.Popen([sys.executable, os.path.join(BENCHMARKS, "torchvision_worker.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def setup(self, runner, work_dir):
        """Builds torchvision's twin of `runner`'s config and hands it `runner`'s batch (files in work_dir)."""
        import numpy as np
        from torchvision_twin import twin_settings

        batch_file, inference_file = os.path.join(work_dir, "batch.npz"), os.path.join(work_dir, "inference.npy")
        runner.torchvision_batch(batch_file)
        np.save(inference_file, runner.images.numpy())
        self.ask({"setup": {"gpu": self.gpu, "twin": twin_settings(runner.config, runner.image_size),
                            "batch_file": batch_file, "inference_file": inference_file,
                            "precision": FLAGS.precision}})

    def ask(self, request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the torchvision worker stopped (exit status {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def run(self, mode, batch):
        return self.ask({"run": mode, "batch": batch})["seconds"]

    def peak_memory_mb(self):
        return self.ask({"memory": True})["peak_memory_mb"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


# ------------------------------------------------------------------------------------------------------- main

def main(_):
    if FLAGS.image_size % 32:
        raise _cli.UsageError(f"--image_size must be a multiple of 32, got {FLAGS.image_size}")
    if FLAGS.compare_precision and FLAGS.compare != "none":
        raise _cli.UsageError("--compare_precision and --compare torchvision: one comparison at a time")
    _cli.check_config_files(FLAGS.config_file)  # before TensorFlow loads
    if FLAGS.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    theirs = TorchvisionClient(FLAGS.device != "cpu") if FLAGS.compare == "torchvision" else None
    import tempfile

    import tensorflow as tf

    sys.path.insert(0, BENCHMARKS)
    from tfrcnn_runner import TfrcnnRunner

    from tfrcnn.hardware import cpu_info

    gpu = bool(tf.config.list_physical_devices("GPU"))
    if FLAGS.device == "gpu" and not gpu:
        raise _cli.UsageError("--device gpu: TensorFlow sees no GPU")
    s = FLAGS.image_size
    settings = (f"data.img_scale=[{s},{s}],data.pad_size=[{s},{s}],test_cfg.rcnn.score_thr={FLAGS.score_thr},"
                f"runtime.jit_compile={str(FLAGS.xla).lower()}")
    work_dir = tempfile.TemporaryDirectory()

    def runner(precision):
        overrides = [o for o in (FLAGS.params_override, settings, _cli.precision_override(precision)) if o]
        saved_model = os.path.join(work_dir.name, precision) if FLAGS.saved_model else None
        return TfrcnnRunner(FLAGS.config_file, overrides, s, data=FLAGS.data, train_batch=FLAGS.train_batch,
                            images=FLAGS.throughput_batch, train="train" in FLAGS.modes, saved_model_dir=saved_model)

    ours = runner(FLAGS.precision)
    other = f"tfrcnn_{FLAGS.compare_precision}" if FLAGS.compare_precision else "torchvision"
    if FLAGS.compare_precision:
        theirs = runner(FLAGS.compare_precision)
    elif theirs:
        theirs.setup(ours, work_dir.name)
    common = {"image_size": s, "device": "gpu" if gpu else "cpu", "precision": FLAGS.precision,
              "saved_model": FLAGS.saved_model, "xla": FLAGS.xla, "score_thr": FLAGS.score_thr, "data": FLAGS.data,
              "machine": f"{platform.node()} {os.cpu_count()} cpus", **cpu_info(),
              "date": datetime.date.today().isoformat(), "config": FLAGS.config_file,
              "params_override": FLAGS.params_override}
    lines = []
    for mode in FLAGS.modes:
        images = {"inference": 1, "throughput": FLAGS.throughput_batch, "train": ours.train_batch_size}[mode]
        times = {"tfrcnn": [], other: []}
        for i in range(FLAGS.warmup + FLAGS.repeats):  # A B A B ...
            a = ours.run(mode, images)
            b = theirs.run(mode, images) if theirs else None
            if i >= FLAGS.warmup:
                times["tfrcnn"].append(a)
                if theirs:
                    times[other].append(b)
        record = {"mode": mode, "batch": images, **common, "tfrcnn": summary(times["tfrcnn"], images)}
        # (both precisions share this process: its peak memory is theirs together)
        record["tfrcnn"]["peak_memory_mb"] = ours.peak_gpu_memory_mb() or peak_rss_mb()
        if theirs:
            record[other] = summary(times[other], images)
            record[other]["peak_memory_mb"] = theirs.peak_gpu_memory_mb() or peak_rss_mb() \
                if FLAGS.compare_precision else theirs.peak_memory_mb()
            ratios = [a / b for a, b in zip(times["tfrcnn"], times[other])]
            record["ratios"] = [round(r, 3) for r in ratios]
            record["ratio_median"] = round(statistics.median(ratios), 3)
        lines.append(record)
        print(json.dumps(record), flush=True)
    if FLAGS.profile:
        record = {"mode": "profile", "batch": 1, **common, "stages_s": ours.profile(FLAGS.repeats)}
        lines.append(record)
        print(json.dumps(record), flush=True)
    if theirs and not FLAGS.compare_precision:
        theirs.close()
    work_dir.cleanup()
    if FLAGS.output:
        with open(FLAGS.output, "a") as f:
            for record in lines:
                f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    _cli.run(main)
