r"""Trains, evaluates, and (with no config given) runs the whole main job on the synthetic shapes dataset.

    python scripts/train.py --model_dir runs/shapes                      # the main job, see below
    python scripts/train.py --config_file configs/mask_rcnn_r50_fpn_1x_coco.yaml --model_dir runs/coco \
        --mode train_and_eval --params_override data.samples_per_gpu=4

Run again with the same --model_dir and training resumes from the newest checkpoint there. A new run starts from
the config's resume_from, else from model.pretrained (configs/mask_rcnn_r50_*: torchvision://resnet50, the file
resnet50-0676ba61.pth in torch.hub's cache, ~/.cache/torch/hub/checkpoints, which nothing downloads) and load_from.

The main job (no --config_file): generates the shapes dataset under --shapes_dir if it is absent, trains
configs/mask_rcnn_r18_fpn_shapes.yaml from scratch, evaluates it on the held-out val split
(MODEL_DIR/metrics.json), exports MODEL_DIR/saved_model and draws predictions on val images to
MODEL_DIR/predictions/.

Several machines: start the same command on each with --strategy multi_worker_mirrored and the TF_CONFIG
environment variable naming the cluster and this process's task; worker 0 (the chief) writes the run's files.
docs/training.md has the commands, for one host and for two.
"""
import os

from absl import flags

import _cli

SHAPES_CONFIG = os.path.join(_cli.REPO, "configs", "mask_rcnn_r18_fpn_shapes.yaml")
# The main job's dataset: 640 training images, 160 steps an epoch at the config's 4 images per step.
SHAPES_SIZES = dict(num_train=640, num_val=200)
SHAPES_WAIT_S = 3600  # how long a non-chief worker waits for the chief to generate the shapes dataset

_cli.define_config_flags(default_help="Default: none, which runs the main job on the synthetic shapes "
                         "dataset (configs/mask_rcnn_r18_fpn_shapes.yaml, train_and_eval, then the export and "
                         "drawings).")
flags.DEFINE_string("model_dir", None, "Required. The run directory: config.yaml, ckpt-<step> checkpoints, "
                    "logs/ (TensorBoard), metrics.json. An existing run there resumes from its newest checkpoint. "
                    "Under multi_worker_mirrored every worker must see the same one (one host or shared storage).")
flags.DEFINE_enum("mode", None, ["train", "train_and_eval", "eval"],
                  "train; train_and_eval (COCO AP every evaluation.interval epochs and at the end); eval (the "
                  "newest checkpoint). Default: train, or train_and_eval for the main job.")
flags.DEFINE_string("init_checkpoint", None, "Weights to start a new run from (weights only): a tfrcnn checkpoint "
                    "prefix or a directory holding one, whole model or a part such as a backbone, matched by "
                    "variable path and copied over the model.pretrained backbone. Takes the place of the config's "
                    "load_from. Ignored when model_dir already has a checkpoint or the config sets resume_from. "
                    "Default: none (the config's load_from).")
flags.DEFINE_enum("strategy", None, ["one_device", "mirrored", "multi_worker_mirrored"],
                  "tf.distribute strategy: one_device (the first GPU, else the CPU), mirrored (every GPU of this "
                  "host), multi_worker_mirrored (the hosts the TF_CONFIG environment variable lists, data.samples"
                  "_per_gpu images per replica). Default: runtime.strategy of the config (one_device).")
flags.DEFINE_enum("mixed_precision", None, ["mixed_float16", "mixed_bfloat16"],
                  "Keras dtype policy. Default: runtime.mixed_precision of the config (float32).")
flags.DEFINE_string("shapes_dir", os.path.join("data", "shapes"),
                    "Main job only: where the synthetic shapes dataset is generated (once) and read from.")
flags.mark_flag_as_required("model_dir")
FLAGS = flags.FLAGS


def _overrides():
    parts = [FLAGS.params_override] if FLAGS.params_override else []
    if FLAGS.strategy:
        parts.append(f"runtime.strategy={FLAGS.strategy}")
    if FLAGS.mixed_precision:
        parts.append(f"runtime.mixed_precision={FLAGS.mixed_precision}")
    return parts or None


def main(_):
    main_job = not FLAGS.config_file
    if not main_job:
        _cli.check_config_files(FLAGS.config_file)  # before TensorFlow loads
    path = FLAGS.init_checkpoint
    if path and "://" not in path and not (os.path.isdir(path) or os.path.isfile(path + ".index")):
        raise FileNotFoundError(f"{path}: no such checkpoint ({path}.index is missing)")

    from tfrcnn.config import load_config
    from tfrcnn.training import trainer
    from tfrcnn.training.distributed import is_chief

    # Under multi_worker_mirrored only the chief writes files: the shapes dataset, the export, the drawings.
    chief = is_chief()  # from TF_CONFIG: True without it
    if main_job:
        shapes = _shapes_dataset(chief)
        config = load_config(SHAPES_CONFIG, _shapes_paths(shapes) + (_overrides() or []))
    else:
        config = load_config(FLAGS.config_file, _overrides())
    chief = chief or config.runtime.strategy != "multi_worker_mirrored"
    mode = FLAGS.mode or ("train_and_eval" if main_job else "train")
    metrics = trainer.train(config, FLAGS.model_dir, mode=mode, init_checkpoint=FLAGS.init_checkpoint)
    if main_job and chief and metrics:
        _finish_main_job(metrics)
    return 0


def _shapes_dataset(chief):
    """The main job's dataset: generated by the chief (or the one process) when absent; a non-chief worker
    waits for it (the chief's --shapes_dir must be storage that it reads too)."""
    import time

    from tfrcnn.data import ensure_shapes_dataset
    from tfrcnn.data.shapes import shapes_dataset_is_complete
    if not chief:
        began = time.time()
        if not shapes_dataset_is_complete(FLAGS.shapes_dir, **SHAPES_SIZES):
            print(f"waiting for the chief to generate the shapes dataset under {FLAGS.shapes_dir}", flush=True)
        while not shapes_dataset_is_complete(FLAGS.shapes_dir, **SHAPES_SIZES):
            if time.time() - began > SHAPES_WAIT_S:
                raise FileNotFoundError(f"{FLAGS.shapes_dir}: no complete shapes dataset after {SHAPES_WAIT_S} s "
                                        "(the chief generates it: give every worker the same --shapes_dir, on "
                                        "storage they share)")
            time.sleep(2)
    return ensure_shapes_dataset(FLAGS.shapes_dir, num_processes=2, progress=chief, **SHAPES_SIZES)


def _shapes_paths(shapes):
    return [f"data.train.tfrecord={shapes.train_tfrecords},data.train.ann_file={shapes.train_annotations},"
            f"data.train.img_prefix={shapes.train_image_dir},data.val.tfrecord={shapes.val_tfrecords},"
            f"data.val.ann_file={shapes.val_annotations},data.val.img_prefix={shapes.val_image_dir}"]


def _finish_main_job(metrics, num_drawn=8):
    """Exports the trained model and draws its predictions on the first val images."""
    import glob

    from tfrcnn.config import CONFIG_NAME
    from tfrcnn.export import DetectionModule, export_saved_model
    from tfrcnn.inference import predict_images
    from tfrcnn.training.checkpoints import load_model

    model_dir = FLAGS.model_dir
    model, config, _ = load_model(model_dir)
    export_dir = os.path.join(model_dir, "saved_model")
    export_saved_model(model, config, export_dir, input_types=("image_tensor", "image_bytes"))
    module = DetectionModule(model, config, paste_masks=True)
    drawn_dir = os.path.join(model_dir, "predictions")
    paths = sorted(glob.glob(os.path.join(config.data.val.img_prefix, "*.jpg")))[:num_drawn]
    predict_images(lambda image: {k: v.numpy() for k, v in module.detect(image[None]).items()}, paths, drawn_dir,
                   module.label_map, verbose=False)
    print(f"\nbbox AP {metrics['bbox']['AP']:.3f}, segm AP {metrics['segm']['AP']:.3f} on the shapes val split")
    print(f"  config:       {os.path.join(model_dir, CONFIG_NAME)}")
    print(f"  checkpoints:  {model_dir}/ckpt-*")
    print(f"  metrics:      {os.path.join(model_dir, 'metrics.json')}")
    print(f"  SavedModel:   {export_dir}")
    print(f"  predictions:  {drawn_dir}/*.png")
    print(f"  TensorBoard:  tensorboard --logdir {os.path.join(model_dir, 'logs')}")


if __name__ == "__main__":
    _cli.run(main, errors=(FloatingPointError,))
