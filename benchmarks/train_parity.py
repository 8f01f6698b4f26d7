"""Learning-curve parity: tfrcnn and torchvision trained side by side from the same initial weights, on the same
images in the same order, with the same schedule, on the main job's shapes data. Test-only: needs torch and
torchvision.

    python benchmarks/train_parity.py --seed 0                    # the main job's recipe, 3 epochs
    python benchmarks/train_parity.py --seed 0 --params_override runner.max_epochs=4,lr_config.step=[3]
    python benchmarks/train_parity.py --seed 0 --params_override "optimizer.type=SGD,optimizer.lr=0.02,\
optimizer.momentum=0.9,optimizer.betas=null,optimizer.eps=null,optimizer.weight_decay=0.0001,\
optimizer_config.grad_clip=null"

torchvision's twin of the config (benchmarks/torchvision_twin.py) is drawn with torch.manual_seed(--seed) and
converted into each tfrcnn recipe with tfrcnn's converter (`--recipes`: `mmdet`, the config as it is, i.e.
tfrcnn's default recipe with MMDetection's losses and sampling; `torchvision`, the config with torchvision's
behaviours, configs/torchvision/_base_/torchvision_mask_rcnn.yaml). Every step draws data.samples_per_gpu images (a seeded random order per epoch, flipped with data.flip_ratio), puts them through
torchvision's transform once, and gives the very same tensors to every model (tfrcnn gets the full-image masks with
`gt_mask_boxes`). The optimizer, clip and lr schedule are the config's in both libraries. Losses are averaged over
each 50 steps; at the end each model is evaluated on the val split by its own library's inference (COCO AP). A
model whose loss turns NaN or inf stops there and is reported as diverged.

`--draws K` trains each model K times from the same initial weights on the same batches, each with its own sampler
draws: how far a library lands from itself, the yardstick for the gap between the two. `--cross_eval` also
evaluates the trained twin's weights by tfrcnn's inference, which tells a difference in training from one in
inference.
"""
import argparse
import copy
import json
import math
import os
import random
import sys
import time

# torch and torchvision before TensorFlow (see tests/conftest.py)
import numpy as np
import torch
import torchvision  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
from torchvision_shapes import evaluate_twin, lr_at, training_sample  # noqa: E402
from torchvision_twin import build_optimizer, build_twin, copy_twin_weights, tfrcnn_batch, twin_settings  # noqa: E402

MAIN_CONFIG = os.path.join(REPO, "configs", "mask_rcnn_r18_fpn_shapes.yaml")
TORCHVISION_BEHAVIOUR = os.path.join(REPO, "configs", "torchvision", "_base_", "torchvision_mask_rcnn.yaml")
LOSSES = {"rpn_cls": "loss_objectness", "rpn_bbox": "loss_rpn_box_reg", "rcnn_cls": "loss_classifier",
          "rcnn_bbox": "loss_box_reg", "mask": "loss_mask"}
WINDOW = 50


def load_recipe(name, config_file, overrides):
    """The tfrcnn Config of a recipe: the config file, with torchvision's behaviours merged in for `torchvision`."""
    import tfrcnn
    if name == "mmdet":
        return tfrcnn.load_config(config_file, overrides)
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(f"_base_: [{os.path.abspath(config_file)}, {TORCHVISION_BEHAVIOUR}]\n")
    try:
        return tfrcnn.load_config(f.name, overrides)
    finally:
        os.unlink(f.name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config_file", default=MAIN_CONFIG)
    parser.add_argument("--params_override", default=None, help="applied to every recipe's config")
    parser.add_argument("--recipes", default="mmdet,torchvision", help="comma-separated: mmdet, torchvision")
    parser.add_argument("--shapes_dir", default=os.path.join("data", "shapes"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="also write the JSON result here")
    parser.add_argument("--max_steps", type=int, default=None, help="stop after this many steps (a smoke run)")
    parser.add_argument("--draws", type=int, default=1,
                        help="train each model this many times from the same initial weights on the same batches, "
                             "each with its own sampler draws (torchvision: torch's RNG as it comes; tfrcnn: "
                             "runtime.seed + k): the spread of a library against itself, the yardstick for the gap "
                             "between the two")
    parser.add_argument("--cross_eval", action="store_true",
                        help="also evaluate the trained twin's weights by tfrcnn's inference (each recipe's "
                             "test_cfg): tells a difference in training from one in inference")
    args = parser.parse_args()

    import tensorflow as tf

    import tfrcnn
    from tfrcnn.data import ensure_shapes_dataset
    from tfrcnn.training.optimizer import build_optimizer as build_tfrcnn_optimizer
    from tfrcnn.training.trainer import configure_determinism, evaluate

    shapes = ensure_shapes_dataset(args.shapes_dir, num_train=640, num_val=200, num_processes=2)
    paths = (f"data.train.tfrecord={shapes.train_tfrecords},data.train.ann_file={shapes.train_annotations},"
             f"data.train.img_prefix={shapes.train_image_dir},data.val.tfrecord={shapes.val_tfrecords},"
             f"data.val.ann_file={shapes.val_annotations},data.val.img_prefix={shapes.val_image_dir}")
    overrides = [paths] + ([args.params_override] if args.params_override else [])
    recipes = args.recipes.split(",")
    configs = {name: load_recipe(name, args.config_file, overrides) for name in recipes}
    config = configs[recipes[0]]
    side = config.data.img_scale[0] if isinstance(config.data.img_scale[0], int) else config.data.img_scale[0][0]
    settings = twin_settings(config, side)
    for name, c in configs.items():
        if twin_settings(c, side) != settings:
            raise ValueError(f"recipe {name}: its torchvision twin differs from {recipes[0]}'s")
    configure_determinism(config)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    twin = build_twin(settings).train()
    clip = settings["optimizer"]["grad_clip"]
    from pycocotools.coco import COCO
    coco = COCO(shapes.train_annotations)
    ids = [i for i in coco.getImgIds() if coco.getAnnIds(imgIds=i)]
    batch = config.data.samples_per_gpu
    steps_per_epoch = len(ids) // batch
    steps = steps_per_epoch * config.runner.max_epochs
    if args.max_steps is not None:
        steps = min(steps, args.max_steps)

    def suffix(k):
        return "" if k == 0 else f"_draw{k}"

    twins = {}
    for k in range(args.draws):  # copies before any step: the same initial weights
        draw = twin if k == 0 else copy.deepcopy(twin)
        twins["torchvision" + suffix(k)] = (draw, build_optimizer(settings, draw))
    models, run_configs = {}, {}
    for name, c in configs.items():
        for k in range(args.draws):
            run = f"tfrcnn_{name}" + suffix(k)
            run_configs[run] = c if k == 0 else load_recipe(
                name, args.config_file, overrides + [f"runtime.seed={c.runtime.seed + k}"])
            model = tfrcnn.build_model(run_configs[run], build_size=(side, side))
            copy_twin_weights(twin, model)
            model.compile(optimizer=build_tfrcnn_optimizer(run_configs[run], steps_per_epoch, model))
            models[run] = model
    runs = list(twins) + list(models)
    sums = {r: {k: 0.0 for k in list(LOSSES) + ["loss"]} for r in runs}
    curves = {r: [] for r in runs}
    diverged = {r: None for r in runs}
    seconds = {r: 0.0 for r in runs}
    order = []
    print(f"{steps} steps of {batch} images; seed {args.seed}; recipes {recipes}; "
          f"params_override {args.params_override}", flush=True)
    for step in range(steps):
        if len(order) < batch:
            order += rng.sample(ids, len(ids))
        samples = [training_sample(coco, order.pop(), shapes.train_image_dir, rng.random() < config.data.flip_ratio)
                   for _ in range(batch)]
        images, targets = [s[0] for s in samples], [s[1] for s in samples]
        with torch.no_grad():
            image_list, batch_targets = twin.transform(images, targets)
        np_images, np_targets = tfrcnn_batch(image_list, batch_targets, config.data.max_instances)

        for run, (tv, tv_optimizer) in twins.items():
            if diverged[run] is not None:
                continue
            began = time.perf_counter()
            for group in tv_optimizer.param_groups:
                group["lr"] = lr_at(step, config, steps_per_epoch)
            losses = tv(images, targets)
            loss = sum(losses.values())
            if math.isfinite(loss.item()):
                tv_optimizer.zero_grad()
                loss.backward()
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_([p for p in tv.parameters() if p.requires_grad], clip)
                tv_optimizer.step()
                for ours, theirs in LOSSES.items():
                    sums[run][ours] += losses[theirs].item()
                sums[run]["loss"] += loss.item()
            else:
                diverged[run] = step
            seconds[run] += time.perf_counter() - began
        for run, model in models.items():
            if diverged[run] is not None:
                continue
            began = time.perf_counter()
            logs = model.train_on_batch(tf.constant(np_images), {k: tf.constant(v) for k, v in np_targets.items()},
                                        return_dict=True)
            seconds[run] += time.perf_counter() - began
            if not math.isfinite(float(logs["loss"])):
                diverged[run] = step
                continue
            for key in sums[run]:
                sums[run][key] += float(logs[key])
        if (step + 1) % WINDOW == 0 or step + 1 == steps:
            n = (step % WINDOW) + 1
            line = [f"step {step + 1}"]
            for run in runs:
                if diverged[run] is not None and diverged[run] <= step:
                    curves[run].append(None)
                    line.append(f"{run} diverged at step {diverged[run]}")
                else:
                    curves[run].append({k: round(v / n, 5) for k, v in sums[run].items()})
                    line.append(f"{run} {sums[run]['loss'] / n:.4f}")
                sums[run] = {k: 0.0 for k in sums[run]}
            print(" | ".join(line), flush=True)

    result = {"seed": args.seed, "steps": steps, "images_per_step": batch, "params_override": args.params_override,
              "config_file": os.path.relpath(args.config_file, REPO), "window": WINDOW, "curves": curves,
              "diverged_at": diverged,
              "s_per_step": {r: round(seconds[r] / max(steps, 1), 4) for r in runs}, "ap": {}}
    for run, (tv, _) in twins.items():
        ap = evaluate_twin(tv, args.shapes_dir, config.test_cfg.rcnn.mask_thr_binary) \
            if diverged[run] is None else {"bbox": 0.0, "segm": 0.0}
        result["ap"][run] = {t: round(v, 4) for t, v in ap.items()}
    def tfrcnn_ap(c, model):
        metrics = evaluate(c, model, split="val", progress=False)
        return {t: round(metrics[t]["AP"], 4) for t in ("bbox", "segm")}

    for run, model in models.items():
        result["ap"][run] = {"bbox": 0.0, "segm": 0.0} if diverged[run] is not None else \
            tfrcnn_ap(run_configs[run], model)
    if args.cross_eval and diverged["torchvision"] is None:
        for name, c in configs.items():
            model = tfrcnn.build_model(c, build_size=(side, side))
            copy_twin_weights(twin, model)
            result["ap"][f"torchvision_by_tfrcnn_{name}"] = tfrcnn_ap(c, model)
    print(json.dumps(result), flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
