"""Exports a trained detector as a TensorFlow SavedModel with Model Garden's serving signatures.

    python scripts/export_saved_model.py --model_dir runs/mask_rcnn --export_dir exports/mask_rcnn \
        --input_type image_tensor --input_type image_bytes --paste_masks

The first --input_type is `serving_default`; every type is also a signature of its own name. The export holds
the preprocessing (resize, normalize, pad) and the post-processing (boxes in original pixels, dataset category
ids), plus label_map.json, label_map.pbtxt and the resolved config.yaml. See tfrcnn/export.py for the outputs.
"""
import sys

from absl import app, flags, logging

flags.DEFINE_string("model_dir", None, "A training run's directory: its config.yaml and newest checkpoint.")
flags.DEFINE_string("config_file", None, "A config to use instead of <model_dir>/config.yaml.")
flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix (e.g. runs/x/ckpt-12) instead of the newest one.")
flags.DEFINE_string("export_dir", None, "Folder to write the SavedModel, label maps and config.yaml into.")
flags.DEFINE_multi_enum("input_type", ["image_tensor"], ["image_tensor", "image_bytes", "tf_example"],
                        "Serving input type (repeatable): image_tensor (uint8 [B, H, W, 3]), image_bytes (string "
                        "[B] encoded images) or tf_example (string [B] serialized tf.train.Examples with "
                        "image/encoded). The first one is serving_default.")
flags.DEFINE_boolean("paste_masks", False, "Also output detection_masks_image: uint8 0/1 masks pasted into the "
                     "original image (Mask R-CNN).")
flags.DEFINE_string("params_override", None, "Config overrides, e.g. 'test_cfg.rcnn.score_thr=0.3'.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.export_dir:
        print("error: --export_dir is required", file=sys.stderr)
        return 1
    if not FLAGS.model_dir and not (FLAGS.config_file and FLAGS.checkpoint_path):
        print("error: give --model_dir (a training run's directory), or --config_file and --checkpoint_path",
              file=sys.stderr)
        return 1
    logging.set_verbosity(logging.WARNING)  # tf.saved_model.save logs a line per renamed function input
    from tfrcnn.config import ConfigError
    from tfrcnn.export import export_saved_model
    from tfrcnn.training.checkpoints import load_model
    try:
        model, config, path = load_model(model_dir=FLAGS.model_dir, config_file=FLAGS.config_file,
                                         checkpoint_path=FLAGS.checkpoint_path, overrides=FLAGS.params_override)
        keys = export_saved_model(model, config, FLAGS.export_dir, input_types=FLAGS.input_type,
                                  paste_masks=FLAGS.paste_masks)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Exported {path} to {FLAGS.export_dir}")
    print(f"Signatures: {', '.join(keys)}")
    print(f"Inspect it with: saved_model_cli show --dir {FLAGS.export_dir} --all")
    return 0


if __name__ == "__main__":
    app.run(main)
