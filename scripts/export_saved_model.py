r"""Exports a trained detector as a TensorFlow SavedModel with Model Garden's serving signatures.

    python scripts/export_saved_model.py --model_dir runs/mask_rcnn --export_dir exports/mask_rcnn \
        --input_type image_tensor --input_type image_bytes --paste_masks

The first --input_type is `serving_default`; every type is also a signature of its own name. The export holds
the preprocessing (resize, normalize, pad) and the post-processing (boxes in original pixels, dataset category
ids), plus label_map.json, label_map.pbtxt and the resolved config.yaml. See tfrcnn/export.py for the outputs.
"""
from absl import flags

import _cli

flags.DEFINE_string("model_dir", None, "A training run's directory: its config.yaml and newest checkpoint are "
                    "the defaults of --config_file and --checkpoint_path. Give it, or both of those.")
flags.DEFINE_multi_string("config_file", None, "A YAML config (default: <model_dir>/config.yaml); several merge in "
                          "order, later files winning")
flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix such as runs/x/ckpt-12 (the files ckpt-12.index "
                    "and ckpt-12.data-*). Default: the newest checkpoint in --model_dir.")
flags.DEFINE_string("export_dir", None, "Required. Folder to write the SavedModel (saved_model.pb, variables/), "
                    "label_map.json, label_map.pbtxt and config.yaml into; created if needed.")
flags.DEFINE_multi_enum("input_type", ["image_tensor"], ["image_tensor", "image_bytes", "tf_example"],
                        "Serving input type: image_tensor (uint8 [B, H, W, 3]), image_bytes (string [B] of "
                        "JPEG/PNG/GIF/BMP files' bytes) or tf_example (string [B] of serialized tf.train.Examples "
                        "with image/encoded); each becomes a signature of its name, the first also serving_default")
flags.DEFINE_boolean("paste_masks", False, "Also output detection_masks_image: uint8 0/1 masks [B, K, H, W] pasted "
                     "into the original image, thresholded at test_cfg.rcnn.mask_thr_binary (Mask R-CNN only).")
flags.DEFINE_string("params_override", None, "Config overrides as a.b=c,d.e=f, applied after the config files, "
                    "e.g. test_cfg.rcnn.score_thr=0.3. Default: none.")
flags.mark_flag_as_required("export_dir")
FLAGS = flags.FLAGS


def main(_):
    if not FLAGS.model_dir and not (FLAGS.config_file and FLAGS.checkpoint_path):
        raise _cli.UsageError("give --model_dir (a training run's directory), or --config_file and "
                              "--checkpoint_path")
    _cli.check_run(FLAGS.model_dir, FLAGS.config_file, FLAGS.checkpoint_path)  # before TensorFlow loads
    from tfrcnn.export import export_saved_model
    from tfrcnn.training.checkpoints import load_model

    model, config, path = load_model(model_dir=FLAGS.model_dir, config_file=FLAGS.config_file,
                                     checkpoint_path=FLAGS.checkpoint_path, overrides=FLAGS.params_override)
    keys = export_saved_model(model, config, FLAGS.export_dir, input_types=FLAGS.input_type,
                              paste_masks=FLAGS.paste_masks)
    print(f"Exported {path} to {FLAGS.export_dir}")
    print(f"Signatures: {', '.join(keys)}")
    print(f"Inspect it with: saved_model_cli show --dir {FLAGS.export_dir} --all")
    return 0


if __name__ == "__main__":
    _cli.run(main)
