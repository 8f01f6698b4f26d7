"""`tf.distribute` strategies and the training loop for MultiWorkerMirroredStrategy.

Keras 3's `fit` works on one device and under MirroredStrategy, but fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585: it reduces a distributed input batch to build the model). There `CustomLoop`
drives the same `model.train_step` itself, as TensorFlow's custom-training-loop guide for distributed training
does: a `tf.function` that calls `strategy.run(model.train_step, ...)` on the next element of a distributed
dataset (tests/training/test_distributed.py runs it under every strategy). It works under every strategy, so it is also the loop to compare the strategies with.

The contract with the model:
- the model and its optimizer are created, and the model compiled, inside `strategy.scope()`;
- `model.train_step(batch)` takes one replica's batch, applies the gradients itself (`optimizer.apply`
  sums them over replicas), and returns a dict of scalar tensors holding the same, global values on every
  replica (losses normalized by the global batch, then summed over replicas with the replica context's
  `all_reduce`);
- the dataset yields GLOBAL batches: the strategy splits each batch over the replicas (or a
  `dataset_fn(input_context)` yields each replica's batches from this worker's share of the input).

Under MultiWorkerMirroredStrategy every worker runs the same program; one of them, the chief (`is_chief`), writes
the run's files. `check_in_sync` tells whether the workers hold the same step and weights.
"""
import numpy as np
import tensorflow as tf

STRATEGIES = ("one_device", "mirrored", "multi_worker_mirrored")


def make_strategy(name, devices=None):
    """The `tf.distribute.Strategy` that `runtime.strategy` names.

    Args:
      name: "one_device", "mirrored" or "multi_worker_mirrored".
      devices: optional device names. one_device: its first entry (default: TensorFlow's default strategy,
        which runs on the first GPU, else the CPU);
        mirrored: the replicas' devices (default every GPU, else the CPU); multi_worker_mirrored takes none
        (the cluster comes from the TF_CONFIG environment variable, each worker uses its local GPUs or CPU).
    """
    if name == "one_device":
        if not devices:
            # TensorFlow's default strategy already places everything on the first GPU, else the CPU. Measured on
            # the 2-core CPU machine, fit under OneDeviceStrategy took 1.9 s per step of the main job against
            # 0.95 s under the default strategy (BENCHMARKS.md).
            return tf.distribute.get_strategy()
        return tf.distribute.OneDeviceStrategy(devices[0])
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker_mirrored":
        if devices:
            raise ValueError("multi_worker_mirrored: devices come from TF_CONFIG and each worker's local devices")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")


def is_chief(strategy=None):
    """True in the process that writes the run's files (config, checkpoints, summaries, metrics).

    That is every process but under a multi-worker cluster: there, the task of type "chief", or worker 0 when the
    cluster has no "chief" task (TensorFlow's convention). Without a strategy, the cluster comes from the TF_CONFIG
    environment variable (so that a script can decide before it creates the strategy).
    """
    resolver = (tf.distribute.cluster_resolver.TFConfigClusterResolver() if strategy is None
                else strategy.cluster_resolver)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


def task_name(strategy=None):
    """'worker 1' (this process's task in the cluster), or '' outside a multi-worker cluster."""
    resolver = (tf.distribute.cluster_resolver.TFConfigClusterResolver() if strategy is None
                else strategy.cluster_resolver)
    if resolver is None or not resolver.task_type:
        return ""
    return f"{resolver.task_type} {resolver.task_id}"


class OutOfSyncError(ValueError):
    """The workers of a multi-worker run do not hold the same step or weights (they read different model_dirs or
    checkpoints)."""


def check_in_sync(model, strategy, rtol=1e-5):
    """Checks that every replica holds the same optimizer step, trainable weights and optimizer state.

    Under MultiWorkerMirroredStrategy the workers' variables stay equal only if they start equal: each worker
    restores the run's newest checkpoint (or `init_checkpoint`) itself, so a worker that read another model_dir
    would train a different model, silently. This gathers (step, and the sum and the sum of magnitudes of each
    variable) from every replica: one small all-gather, which every worker must call at the same point of its
    program.

    Equal starts do not keep the workers bitwise equal: on the 2-core CPU, about two 4-step runs in three of the
    tiny Mask R-CNN over two workers ended with one large conv kernel (and its momentum) differing by one ulp in
    some elements, while the all-reduced gradients matched whenever they were checked (which itself made the
    difference disappear). Since every worker applies the same all-reduced gradient, such differences do not grow
    beyond rounding; `rtol` tolerates them: a variable differs when a sum differs by more than `rtol` × its sum
    of magnitudes.

    BatchNorm's moving statistics are left out: each replica updates its own copy from its own batches (Keras
    creates them with aggregation NONE), as each PyTorch DDP process does; the chief's copy is the one that its
    checkpoints keep and its evaluation uses. Training reads batch statistics, so the copies never meet.
    Returns (step, the largest relative difference found, 0.0 when bitwise equal).
    Raises OutOfSyncError naming the difference.
    """
    optimizer = model.optimizer
    variables = list(model.trainable_weights) + [v for v in optimizer.variables if v is not optimizer.iterations]

    def fingerprint():
        values = [tf.cast(optimizer.iterations, tf.float64)]
        for v in variables:
            v = tf.cast(v, tf.float64)
            values += [tf.reduce_sum(v), tf.reduce_sum(tf.abs(v))]
        return tf.distribute.get_replica_context().all_gather(tf.stack(values)[None], axis=0)

    gathered = strategy.experimental_local_results(tf.function(lambda: strategy.run(fingerprint))())[0].numpy()
    return _compare_fingerprints(gathered, [v.path for v in variables], rtol)


def _compare_fingerprints(gathered, names, rtol):
    """check_in_sync's verdict on float64 [replicas, 1 + 2 × variables]: (step, sum, sum of |v|, ...) per row."""
    steps = [int(s) for s in gathered[:, 0]]
    if len(set(steps)) > 1:
        raise OutOfSyncError(f"the replicas are at different steps {steps}: every worker must read the same "
                             "model_dir (on one host, or on a filesystem they share such as NFS)")
    sums, magnitudes = gathered[:, 1::2], gathered[:, 2::2]
    spread = np.maximum(np.ptp(sums, axis=0), np.ptp(magnitudes, axis=0))
    relative = spread / np.maximum(magnitudes.max(axis=0), np.finfo(np.float64).tiny)
    differ = [name for name, r in zip(names, relative) if r > rtol]
    if differ:
        raise OutOfSyncError(f"the replicas hold different weights at step {steps[0]} ({len(differ)} variables, "
                             f"e.g. {differ[0]}): every worker must read the same checkpoints (model_dir, "
                             "init_checkpoint)")
    return steps[0], float(relative.max(initial=0.0))


def _is_default(strategy):
    """True for the strategy in effect outside any scope (TensorFlow exposes no public test for it)."""
    return type(strategy).__name__ == "_DefaultDistributionStrategy"


def _unwrap(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer wraps the real one


class CustomLoop:
    """Runs `model.train_step` under `strategy` with a loop of tfrcnn's own (see the module docstring).

    Args:
      model: a compiled `keras.Model` created inside `strategy.scope()`.
      strategy: the `tf.distribute.Strategy`.
    """

    def __init__(self, model, strategy):
        if getattr(model, "optimizer", None) is None:
            raise ValueError("compile the model (model.compile(optimizer=...)) before the loop")
        if not _is_default(strategy):
            # Variables created outside the scope live on one device only; the failure would come later and
            # read much worse.
            owners = {"model": model._distribute_strategy,
                      "optimizer": _unwrap(model.optimizer)._distribution_strategy}
            for what, owner in owners.items():
                if owner is not strategy:
                    raise ValueError(f"the {what} was not created inside strategy.scope(): create the model and "
                                     "the optimizer, and compile, inside `with strategy.scope():`")
        self.model, self.strategy = model, strategy
        self._step = None

    def _build(self, dataset):
        """Creates the model's and the optimizer's variables: `strategy.run` cannot create variables."""
        model, optimizer = self.model, self.model.optimizer
        unbuilt = [not all(layer.built for layer in model._flatten_layers())]
        unbuilt += [c is not None and not c.built for c in (model._compile_metrics, model._compile_loss)]
        with self.strategy.scope():
            if any(unbuilt):
                if not isinstance(dataset, tf.data.Dataset):
                    raise ValueError("build the model (call it on a batch inside strategy.scope()) first when "
                                     "the dataset is already distributed, an iterator or a dataset_fn")
                # What fit does to build the model, its compiled loss and metrics, from the shapes of one batch.
                model._symbolic_build(data_batch=next(iter(dataset)))
            if not optimizer.built:
                optimizer.build(model.trainable_variables)

    def _distribute(self, dataset):
        if isinstance(dataset, tf.distribute.DistributedDataset):
            return dataset
        if callable(dataset):  # dataset_fn(input_context) -> this worker's share, per-replica batches
            return self.strategy.distribute_datasets_from_function(dataset)
        return self.strategy.experimental_distribute_dataset(dataset)

    def _make_step(self):
        strategy, model = self.strategy, self.model

        @tf.function
        def step(iterator):
            logs = strategy.run(model.train_step, args=(next(iterator),))
            # train_step's values are already global and equal on every replica: MEAN just picks one.
            return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in logs.items()}

        return step

    def run(self, dataset, steps, on_step=None):
        """Runs `steps` train steps.

        Args:
          dataset: a `tf.data.Dataset` of global batches (it must hold `steps` of them: repeat it), an
            already distributed dataset, or a `dataset_fn(input_context)` for
            `strategy.distribute_datasets_from_function` (per-replica batches). Each run starts a new iterator
            over them; pass an iterator of a distributed dataset (`iter(strategy.distribute_datasets_from_
            function(...))`) instead to go on where the previous run stopped, as `fit` does from epoch to epoch.
          steps: int, number of optimizer updates.
          on_step: optional `on_step(step, logs)`, called after each step with its 0-based index in this
            run and the logs as Python floats. The model's metrics are reset first, as `fit` resets them at
            each epoch, so a train_step that returns metric results logs their means over this run.
        Returns:
          The list of every step's logs, dicts of Python floats.
        """
        self._build(dataset)
        self.model.reset_metrics()  # as fit does at each epoch: metric results are means over this run
        if self._step is None:
            self._step = self._make_step()
        if isinstance(dataset, tf.distribute.DistributedIterator):
            iterator = dataset
        else:
            iterator = iter(self._distribute(dataset))
        history = []
        for i in range(steps):
            logs = {k: float(v) for k, v in self._step(iterator).items()}
            history.append(logs)
            if on_step is not None:
                on_step(i, logs)
        return history


def train_loop(model, dataset, strategy, steps, on_step=None):
    """`CustomLoop(model, strategy).run(dataset, steps, on_step)`: the train step under any strategy."""
    return CustomLoop(model, strategy).run(dataset, steps, on_step)
