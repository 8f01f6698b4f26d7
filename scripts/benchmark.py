r"""Measures a detector's speed: inference latency and throughput, training step time, peak memory; optionally side
by side with its torchvision twin.

    python scripts/benchmark.py --image_size 1024 --compare torchvision
    python scripts/benchmark.py --config_file configs/mask_rcnn_r18_fpn_shapes.yaml --image_size 192 \
        --data train --compare torchvision --modes train      # the main job's step against torchvision's
    python scripts/benchmark.py --modes inference --precision mixed_bfloat16 --xla --profile

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
alike, and every pair gives a ratio (tfrcnn / torchvision; below 1 means tfrcnn is faster).

Output: one JSON line per mode on stdout (and appended to --output): times in seconds, images/s, peak memory,
ratios, the device, the CPU model and its bfloat16 units, precision and XLA setting, and the date.
"""
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from absl import flags

import _cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ["inference", "throughput", "train"]

flags.DEFINE_multi_string("config_file", [os.path.join(REPO, "configs", "mask_rcnn_r50_fpn_1x_coco.yaml")],
                          "A YAML config; several merge in order, later files winning.")
flags.DEFINE_string("params_override", None, "Config overrides as a.b=c,d.e=f, applied after the config files and "
                    "before the benchmark's own settings (image size, score_thr, precision, XLA). Default: none.")
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
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"], "Keras dtype policy "
                  "(runtime.mixed_precision); torchvision runs under autocast to the same half type.")
flags.DEFINE_boolean("xla", False, "runtime.jit_compile: XLA for the dense part (backbone, FPN, RPN head) of "
                     "inference and training.")
flags.DEFINE_float("score_thr", 0.0, "test_cfg.rcnn.score_thr (torchvision's box_score_thresh).")
flags.DEFINE_enum("compare", "none", ["none", "torchvision"], "Also measure torchvision's twin of the config's "
                  "model (benchmarks/torchvision_twin.py), alternating with tfrcnn.")
flags.DEFINE_boolean("profile", False, "Also time the inference stages one by one (backbone, FPN, RPN head, "
                     "proposals, RoIAlign canvas, box RoIAlign, box head, detections, mask RoIAlign, mask head, "
                     "paste).")
flags.DEFINE_string("output", None, "Also append the JSON lines to this file. Default: stdout only.")
flags.DEFINE_boolean("torchvision_worker", False, "Internal: serve torchvision measurements on stdin/stdout.")
FLAGS = flags.FLAGS


def summary(seconds, images):
    """{median_s, min_s, max_s, images_per_s} of a list of timings of `images` images each."""
    median = statistics.median(seconds)
    return {"median_s": round(median, 4), "min_s": round(min(seconds), 4), "max_s": round(max(seconds), 4),
            "images_per_s": round(images / median, 3), "runs": len(seconds)}


def cpu_info():
    """{cpu: the model name, cpu_features: which of avx2, avx512f, avx512_bf16, amx_bf16 it has} from /proc/cpuinfo
    (Linux; elsewhere the platform's processor string and no features)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return {"cpu": platform.processor() or platform.machine(), "cpu_features": []}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.machine())
    flags_line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    present = set(flags_line.split(":", 1)[-1].split())
    return {"cpu": model, "cpu_features": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in present]}


def peak_rss_mb():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)  # Linux reports KiB


# ------------------------------------------------------------------------------------------------------ tfrcnn

class TfrcnnRunner:
    """The config's detector at the benchmark's settings; `run(mode)` does one timed unit of work."""

    def __init__(self):
        import numpy as np
        import tensorflow as tf

        import tfrcnn
        from tfrcnn.export import DetectionModule
        from tfrcnn.training import build_optimizer, configure_determinism

        self.tf = tf
        s = FLAGS.image_size
        settings = (f"data.img_scale=[{s},{s}],data.pad_size=[{s},{s}],test_cfg.rcnn.score_thr={FLAGS.score_thr},"
                    f"runtime.jit_compile={str(FLAGS.xla).lower()},runtime.mixed_precision="
                    f"{'null' if FLAGS.precision == 'float32' else FLAGS.precision}")
        overrides = f"{FLAGS.params_override},{settings}" if FLAGS.params_override else settings
        self.config = tfrcnn.load_config(FLAGS.config_file, overrides)
        self.train_batch_size = FLAGS.train_batch or self.config.data.samples_per_gpu
        configure_determinism(self.config)  # as training runs the config (runtime.deterministic)
        self.model = tfrcnn.build_model(self.config, build_size=(s, s))
        self.module = DetectionModule(self.model, self.config, paste_masks=self.config.model.with_mask)
        batch = max(FLAGS.throughput_batch, self.train_batch_size, 1)
        if FLAGS.data == "train":
            self.train_batch, self.images = self._training_batch(batch)
        else:
            self.train_batch, self.images = self._synthetic_batch(batch, np.random.default_rng(0))
        if "train" in FLAGS.modes:
            self.model.compile(optimizer=build_optimizer(self.config, steps_per_epoch=1000, model=self.model))

    def _synthetic_batch(self, batch, rng):
        """Random pixels, 8 random gt boxes per image with random masks: ((images, targets), uint8 images)."""
        import numpy as np
        from tfrcnn import structures
        tf, s, b, m = self.tf, FLAGS.image_size, self.train_batch_size, 8
        images = tf.constant(rng.integers(0, 256, (batch, s, s, 3)), tf.uint8)
        y1, x1 = rng.uniform(0, s * 0.6, (2, b, m))
        h, w = rng.uniform(32, s * 0.4, (2, b, m))
        crop = self.config.data.mask_crop_size
        targets = {
            structures.GT_BOXES: tf.constant(np.stack([y1, x1, y1 + h, x1 + w], -1), tf.float32),
            structures.GT_CLASSES: tf.constant(rng.integers(1, self.config.model.roi_head.bbox_head.num_classes + 1,
                                                            (b, m)), tf.int32),
            structures.IMAGE_SIZE: tf.constant([[s, s]] * b, tf.int32),
        }
        if self.config.model.with_mask:
            targets[structures.GT_MASKS] = tf.constant(rng.uniform(size=(b, m, crop, crop)) > 0.5, tf.float32)
        return (tf.random.stateless_normal([b, s, s, 3], [0, 0]), targets), images

    def _training_batch(self, batch):
        """The first batch of the training split (as train.py's pipeline delivers it), its images also as uint8."""
        from tfrcnn.data import pipeline
        tf, b = self.tf, self.train_batch_size
        images, targets = next(iter(pipeline.build_dataset(self.config, "train", training=True, batch_size=batch)))
        norm = self.config.data.img_norm_cfg
        pixels = images * tf.constant(norm.std, tf.float32) + tf.constant(norm.mean, tf.float32)
        if norm.to_rgb is False:  # caffe style feeds BGR: back to RGB for the uint8 images
            pixels = pixels[..., ::-1]
        pixels = tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)
        return (images[:b], {k: v[:b] for k, v in targets.items()}), pixels

    def torchvision_batch(self, path):
        """Writes the training batch for torchvision to `path` (.npz): per image its pixels in [0, 1] (CHW, the
        true size), gt boxes [x1, y1, x2, y2], labels and full-image masks, the gt that tfrcnn's batch holds."""
        import numpy as np
        from PIL import Image
        from tfrcnn import structures
        images, targets = self.train_batch
        t = {k: v.numpy() for k, v in targets.items()}
        if FLAGS.data == "train":
            pixels = self.images.numpy()[:self.train_batch_size]
        else:  # synthetic: the normal noise tfrcnn trains on, mapped into [0, 255]
            pixels = np.clip(images.numpy() * 64 + 128, 0, 255)
        arrays = {}
        for i in range(self.train_batch_size):
            h, w = t[structures.IMAGE_SIZE][i]
            keep = t[structures.GT_CLASSES][i] > 0
            boxes = t[structures.GT_BOXES][i][keep]
            arrays[f"image_{i}"] = (pixels[i, :h, :w].transpose(2, 0, 1) / 255.0).astype(np.float32)
            arrays[f"boxes_{i}"] = boxes[:, [1, 0, 3, 2]].astype(np.float32)
            arrays[f"labels_{i}"] = t[structures.GT_CLASSES][i][keep].astype(np.int64)
            masks = np.zeros((len(boxes), h, w), np.uint8)
            if structures.GT_MASKS in t:
                for k, (crop, (y1, x1, y2, x2)) in enumerate(zip(t[structures.GT_MASKS][i][keep], boxes)):
                    top, left = int(np.floor(y1)), int(np.floor(x1))
                    bottom, right = min(int(np.ceil(y2)), h), min(int(np.ceil(x2)), w)
                    if bottom > top and right > left:
                        pasted = Image.fromarray((crop * 255).astype(np.uint8)).resize((right - left, bottom - top))
                        masks[k, top:bottom, left:right] = np.asarray(pasted) >= 128
            arrays[f"masks_{i}"] = masks
        np.savez(path, count=self.train_batch_size, **arrays)

    def run(self, mode):
        """Seconds of one unit: an inference call (batch 1 or throughput_batch) or one training step."""
        tf = self.tf
        start = time.perf_counter()
        if mode == "train":
            logs = self.model.train_on_batch(*self.train_batch, return_dict=True)
            float(logs["loss"])  # waits for the step
        else:
            batch = 1 if mode == "inference" else FLAGS.throughput_batch
            out = self.module.detect(self.images[:batch])
            tf.nest.map_structure(lambda t: t.numpy(), out)
        return time.perf_counter() - start

    def peak_memory_mb(self):
        if FLAGS.device == "gpu" or (FLAGS.device == "auto" and self.tf.config.list_physical_devices("GPU")):
            return round(self.tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)
        return peak_rss_mb()

    def profile(self):
        """{stage: median seconds} of the inference of one image, stage by stage (each a tf.function)."""
        from tfrcnn.data import pipeline
        from tfrcnn.ops.masks import paste_masks

        tf, model, cfg = self.tf, self.model, self.config
        roi = model.roi_head
        image = self.images[0]
        padded, size, _ = pipeline.preprocess_for_inference(image, cfg.data)
        x, size = padded[None], size[None]
        stages = {}

        def stage(name, fn, *args):
            fn = tf.function(fn)
            fn(*args)  # trace
            times = []
            for _ in range(FLAGS.repeats):
                start = time.perf_counter()
                out = fn(*args)
                tf.nest.map_structure(lambda t: t.numpy(), out)
                times.append(time.perf_counter() - start)
            stages[name] = round(statistics.median(times), 4)
            return out

        stage("preprocess", lambda im: pipeline.preprocess_for_inference(im, cfg.data), image)
        feats_c = stage("backbone", lambda t: model.backbone(t, training=False), x)
        feats = stage("fpn", lambda c: model.neck(c, training=False), feats_c)
        logits, deltas = stage("rpn_head", lambda f: model.rpn_head(f, training=False), feats)
        anchors = model.rpn_head.anchors(tuple(x.shape[1:3]), feats)
        proposals, _, valid = stage("proposals_nms", lambda lg, d: model.rpn_head.get_proposals(
            lg, d, anchors, size, cfg.test_cfg.rpn), logits, deltas)
        pyramid = stage("roi_pyramid", lambda f: roi.shared_pyramid(f), feats) if roi.with_mask else None
        box_feats = stage("roi_align_box", lambda f, p, c: roi.extract(f, p, roi.cfg.bbox_roi_extractor, c),
                          feats, proposals, pyramid)
        cls_logits, box_deltas = stage("box_head", lambda r: roi.bbox_head(r), box_feats)
        detections = stage("detections_nms", lambda c, d, p, v: roi.detections(c, d, p, v, size),
                           cls_logits, box_deltas, proposals, valid)
        if roi.with_mask:
            boxes, classes = detections["detection_boxes"], detections["detection_classes"]
            mask_feats = stage("roi_align_mask", lambda f, b, c: roi.extract(f, b, roi.cfg.mask_roi_extractor, c),
                               feats, boxes, pyramid)
            masks = stage("mask_head", lambda m, c: tf.sigmoid(_class_channel(roi.mask_head(m), c)), mask_feats,
                          classes)
            stage("paste_masks", lambda m, b: paste_masks(m, b, tuple(x.shape[1:3]), mode=cfg.test_cfg.rcnn.mask_paste,
                                                          threshold=0.5), masks, boxes)
        return stages


def _class_channel(logits, classes):
    import tensorflow as tf
    index = tf.maximum(classes - 1, 0)
    return tf.gather(logits, index, axis=4, batch_dims=2)


# ------------------------------------------------------------------------------------------------- torchvision

def torchvision_worker():
    """Serves JSON requests on stdin: {"setup": {...}} builds the twin and loads the batch, {"run": mode} answers
    {"seconds": t}, {"memory": true} answers {"peak_memory_mb": m}."""
    import numpy as np
    import torch

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    from torchvision_twin import build_optimizer, build_twin

    state = {}
    for line in sys.stdin:
        request = json.loads(line)
        if "setup" in request:
            cfg = request["setup"]
            torch.manual_seed(0)
            device = torch.device("cuda" if cfg["gpu"] and torch.cuda.is_available() else "cpu")
            model = build_twin(cfg["twin"]).to(device)
            batch = np.load(cfg["batch_file"])
            images = [torch.from_numpy(batch[f"image_{i}"]).to(device) for i in range(int(batch["count"]))]
            targets = [{"boxes": torch.from_numpy(batch[f"boxes_{i}"]).to(device),
                        "labels": torch.from_numpy(batch[f"labels_{i}"]).to(device),
                        "masks": torch.from_numpy(batch[f"masks_{i}"]).to(device)} for i in range(len(images))]
            inference = [torch.from_numpy(x).permute(2, 0, 1).float().div(255).to(device)
                         for x in np.load(cfg["inference_file"])]
            optimizer = build_optimizer(cfg["twin"], model)
            half = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(cfg["precision"])
            state.update(model=model, images=images, targets=targets, inference=inference, optimizer=optimizer,
                         device=device, half=half, cfg=cfg)
            answer = {"ok": True}
        elif "run" in request:
            answer = {"seconds": _torchvision_run(state, request["run"], request["batch"])}
        else:
            gpu = state["device"].type == "cuda"
            answer = {"peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if gpu else peak_rss_mb()}
        print(json.dumps(answer), flush=True)


def _torchvision_run(state, mode, batch):
    import torch

    model, device = state["model"], state["device"]
    autocast = torch.autocast(device.type, dtype=state["half"], enabled=state["half"] is not None)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    start = time.perf_counter()
    if mode == "train":
        model.train()
        with autocast:
            losses = model(state["images"], state["targets"])
        loss = sum(losses.values())
        state["optimizer"].zero_grad()
        loss.backward()
        clip = state["cfg"]["twin"]["optimizer"]["grad_clip"]
        if clip is not None:  # as tfrcnn's optimizer clips the global norm
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
        state["optimizer"].step()
        float(loss.detach())
    else:
        model.eval()
        with torch.no_grad(), autocast:
            out = model(state["inference"][:batch])
        [o["masks" if "masks" in o else "boxes"].sum().item() for o in out]
    sync()
    return time.perf_counter() - start


class TorchvisionClient:
    """The worker process, asked one measurement at a time."""

    def __init__(self, gpu):
        """Starts the worker (before TensorFlow loads here: a child inherits its parent's peak RSS through fork
        and exec); `setup` then builds its model. gpu: let torch use a GPU when it has one."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if not gpu:
            env["CUDA_VISIBLE_DEVICES"] = ""
        self.gpu = gpu
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--torchvision_worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def setup(self, runner, work_dir):
        """Builds torchvision's twin of `runner`'s config and hands it `runner`'s batch (files in work_dir)."""
        import numpy as np
        sys.path.insert(0, os.path.join(REPO, "benchmarks"))
        from torchvision_twin import twin_settings

        batch_file, inference_file = os.path.join(work_dir, "batch.npz"), os.path.join(work_dir, "inference.npy")
        runner.torchvision_batch(batch_file)
        np.save(inference_file, runner.images.numpy())
        self.ask({"setup": {"gpu": self.gpu, "twin": twin_settings(runner.config, FLAGS.image_size),
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
    if FLAGS.torchvision_worker:
        torchvision_worker()
        return 0
    if FLAGS.image_size % 32:
        raise _cli.UsageError(f"--image_size must be a multiple of 32, got {FLAGS.image_size}")
    _cli.check_config_files(FLAGS.config_file)  # before TensorFlow loads
    if FLAGS.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    theirs = TorchvisionClient(FLAGS.device != "cpu") if FLAGS.compare == "torchvision" else None
    import tempfile

    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    if FLAGS.device == "gpu" and not gpu:
        raise _cli.UsageError("--device gpu: TensorFlow sees no GPU")
    ours = TfrcnnRunner()
    if theirs:
        with tempfile.TemporaryDirectory() as work_dir:
            theirs.setup(ours, work_dir)
    common = {"image_size": FLAGS.image_size, "device": "gpu" if gpu else "cpu", "precision": FLAGS.precision,
              "xla": FLAGS.xla, "score_thr": FLAGS.score_thr, "data": FLAGS.data,
              "machine": f"{platform.node()} {os.cpu_count()} cpus", **cpu_info(),
              "date": datetime.date.today().isoformat(), "config": FLAGS.config_file,
              "params_override": FLAGS.params_override}
    lines = []
    for mode in FLAGS.modes:
        images = {"inference": 1, "throughput": FLAGS.throughput_batch, "train": ours.train_batch_size}[mode]
        times = {"tfrcnn": [], "torchvision": []}
        for i in range(FLAGS.warmup + FLAGS.repeats):  # A B A B ...
            a = ours.run(mode)
            b = theirs.run(mode, images) if theirs else None
            if i >= FLAGS.warmup:
                times["tfrcnn"].append(a)
                if theirs:
                    times["torchvision"].append(b)
        record = {"mode": mode, "batch": images, **common, "tfrcnn": summary(times["tfrcnn"], images)}
        record["tfrcnn"]["peak_memory_mb"] = ours.peak_memory_mb()
        if theirs:
            record["torchvision"] = summary(times["torchvision"], images)
            record["torchvision"]["peak_memory_mb"] = theirs.peak_memory_mb()
            ratios = [a / b for a, b in zip(times["tfrcnn"], times["torchvision"])]
            record["ratios"] = [round(r, 3) for r in ratios]
            record["ratio_median"] = round(statistics.median(ratios), 3)
        lines.append(record)
        print(json.dumps(record), flush=True)
    if FLAGS.profile:
        record = {"mode": "profile", "batch": 1, **common, "stages_s": ours.profile()}
        lines.append(record)
        print(json.dumps(record), flush=True)
    if theirs:
        theirs.close()
    if FLAGS.output:
        with open(FLAGS.output, "a") as f:
            for record in lines:
                f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    _cli.run(main)
