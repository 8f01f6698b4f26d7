"""One train step of the tiny Mask R-CNN under a strategy; run as a script in a subprocess by
test_distributed_detector.py.

    python detector_distributed.py single OUT.npz     # one device (CPU), Keras `fit`
    python detector_distributed.py mirrored OUT.npz   # MirroredStrategy over 2 logical CPU devices, Keras `fit`
    python detector_distributed.py worker OUT.npz     # MultiWorkerMirroredStrategy (TF_CONFIG), tfrcnn's train_loop

Every mode trains one step on the same global batch (the 2 images of `data()`) and writes to OUT.npz:
  losses       float64 [6], the step's logged losses in LOSS_NAMES order (per-batch logs of `fit`, or the loop's)
  history      float64 [6], `fit`'s epoch history (fit modes only)
  grad_norm    the L2 norm of the gradient summed over the replicas (`SGD.grad_norm`)
  initial      sha256 of the initial weights' bytes (all `model.weights`, in order)
  final        sha256 of the weights after the step
  w{i}         the weights after the step; `single` also writes the initial ones as w0_{i}
  images       float64 [replicas], the sum of the image(s) each local replica received, in replica order
  batch        float64 [2], the sum of each image of the global batch, in global order
  spread       mirrored only: the largest difference between the two replicas' copies of a weight after the step

The logical devices and TF_CONFIG must be in place before TensorFlow runs its first op, which is why every
strategy runs in a fresh process (this script never imports torch: only TensorFlow is loaded). Every process
runs with TensorFlow's op determinism (see `main`).
"""
import hashlib
import os
import sys

import numpy as np

LOSS_NAMES = ("rpn_cls", "rpn_bbox", "rcnn_cls", "rcnn_bbox", "mask", "loss")
GLOBAL_BATCH, SIZE = 2, 128
# norm_eval: BN normalizes with its moving statistics (MMDetection's default). With batch statistics each
# replica would normalize its own image alone (plain BN is per replica, in PyTorch's DDP too), which is a
# different model from one device normalizing both: that is what SyncBN is for, and it is not parity's concern.
# No warmup: the first step's lr is the full 0.02, so the update w1 - w0 is large enough to compare.
OVERRIDES = "model.backbone.norm_eval=true,lr_config.warmup=null"


def config():
    from detection_fixtures import tiny_config

    return tiny_config(OVERRIDES)


def data():
    """The global batch: images float32 [2, 128, 128, 3] and the targets dict of tfrcnn.structures."""
    from detection_fixtures import shapes_scenes

    images, targets, _ = shapes_scenes(GLOBAL_BATCH, SIZE)
    return images, targets


def digest(weights):
    h = hashlib.sha256()
    for w in weights:
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def build(strategy):
    """The detector and its optimizer, created and compiled inside the scope from the same seed everywhere."""
    import keras

    import tfrcnn
    from tfrcnn.training.optimizer import build_optimizer

    cfg = config()
    keras.utils.set_random_seed(cfg.runtime.seed)
    with strategy.scope():
        model = tfrcnn.build_model(cfg)
        model.compile(optimizer=build_optimizer(cfg, steps_per_epoch=1, model=model), jit_compile=False)
    return model


def local_image_sums(strategy, distributed):
    """The sum of the images each of this process' replicas gets from the first distributed batch."""
    images, _ = next(iter(distributed))
    return np.array([float(np.sum(x.numpy(), dtype=np.float64)) for x in strategy.experimental_local_results(images)])


def run_fit(model, strategy):
    """One step of Keras `fit` on the global batch; returns (per-batch logs, epoch history)."""
    import keras
    import tensorflow as tf

    images, targets = data()
    dataset = tf.data.Dataset.from_tensor_slices((images, targets)).batch(GLOBAL_BATCH)
    seen = {}

    class Logs(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen[batch] = {k: float(v) for k, v in logs.items()}

    history = model.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0, callbacks=[Logs()])
    assert list(seen) == [0], seen
    # fit splits the global batch as experimental_distribute_dataset does: replica r gets image r.
    sums = local_image_sums(strategy, strategy.experimental_distribute_dataset(dataset))
    return seen[0], {k: v[-1] for k, v in history.history.items()}, sums


def run_loop(model, strategy):
    """One step of tfrcnn's train_loop, worker i (replica i) reading image i; returns (logs, image sums)."""
    import tensorflow as tf

    from tfrcnn.training import train_loop

    images, targets = data()

    def dataset_fn(ctx):
        # One replica per worker: the shard of pipeline i is global image i, in a per-replica batch of 1.
        assert ctx.num_input_pipelines == GLOBAL_BATCH and ctx.num_replicas_in_sync == GLOBAL_BATCH
        per_replica = ctx.get_per_replica_batch_size(GLOBAL_BATCH)
        ds = tf.data.Dataset.from_tensor_slices((images, targets))
        return ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id).batch(per_replica)

    sums = local_image_sums(strategy, strategy.distribute_datasets_from_function(dataset_fn))
    (logs,) = train_loop(model, dataset_fn, strategy, 1)
    return logs, sums


def replica_spread(model, strategy):
    """The largest |copy on replica 1 - copy on replica 0| over the model's weights."""
    spread = 0.0
    for w in model.weights:
        copies = [c.numpy() for c in strategy.experimental_local_results(w.value)]
        spread = max([spread] + [float(np.max(np.abs(c - copies[0]), initial=0.0)) for c in copies[1:]])
    return spread


def main(mode, out):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from tfrcnn.training import make_strategy

    # As runtime.deterministic: RoIAlign's gradient is then TensorFlow's CropAndResizeGradImage, whose CPU kernel
    # op determinism runs box by box (its threads would otherwise add into one buffer unsynchronized and lose
    # updates, tensorflow#42033), so every strategy runs the same kernels in the same order.
    tf.config.experimental.enable_op_determinism()
    if mode == "single":
        strategy = make_strategy("one_device", ["/cpu:0"])
    elif mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = make_strategy("mirrored", ["/cpu:0", "/cpu:1"])
    elif mode == "worker":
        strategy = make_strategy("multi_worker_mirrored")
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    assert strategy.num_replicas_in_sync == (1 if mode == "single" else GLOBAL_BATCH), strategy.num_replicas_in_sync

    model = build(strategy)
    result = {"batch": np.array([float(np.sum(x, dtype=np.float64)) for x in data()[0]])}
    initial = [w.numpy() for w in model.weights]
    result["initial"] = digest(initial)
    if mode == "worker":
        logs, result["images"] = run_loop(model, strategy)
    else:
        logs, history, result["images"] = run_fit(model, strategy)
        result["history"] = np.array([history[k] for k in LOSS_NAMES], np.float64)
    result["losses"] = np.array([logs[k] for k in LOSS_NAMES], np.float64)
    result["grad_norm"] = float(model.optimizer.grad_norm.numpy())
    final = [w.numpy() for w in model.weights]
    result["final"] = digest(final)
    result.update({f"w{i}": w for i, w in enumerate(final)})
    if mode == "single":
        result.update({f"w0_{i}": w for i, w in enumerate(initial)})
    if mode == "mirrored":
        result["spread"] = replica_spread(model, strategy)
    np.savez(out, **result)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(*sys.argv[1:])
