"""The learning rate: MMDetection's `lr_config` (policy `step` with a warmup) as a Keras schedule.

mmcv's StepLrUpdaterHook counts steps in epochs and the warmup in iterations. Keras calls a schedule with
`optimizer.iterations`, the 0-based number of updates applied so far, which is mmcv's `runner.iter` before
the iteration runs; epoch boundaries are `e * steps_per_epoch` iterations.
"""
import keras
import tensorflow as tf

WARMUPS = (None, "linear", "constant")


@keras.saving.register_keras_serializable(package="tfrcnn")
class WarmupStepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Step decay by epochs, with an optional warmup over the first iterations.

    At iteration `it` (0-based):
      regular(it) = base_lr * gamma ** #{e in step_epochs : it >= e * steps_per_epoch}
      warmup "linear" (it < warmup_iters): regular(it) * (1 - k), k = (1 - it / warmup_iters) * (1 - warmup_ratio)
      warmup "constant" (it < warmup_iters): regular(it) * warmup_ratio
      otherwise: regular(it)
    """

    def __init__(self, base_lr, steps_per_epoch, step_epochs, gamma=0.1, warmup="linear", warmup_iters=500,
                 warmup_ratio=0.001):
        super().__init__()
        if warmup not in WARMUPS:
            raise ValueError(f"warmup must be one of {WARMUPS}, got {warmup!r}")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        if warmup is not None and warmup_iters < 1:
            raise ValueError(f"warmup_iters must be >= 1 with warmup {warmup!r}, got {warmup_iters}")
        self.base_lr = float(base_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.step_epochs = tuple(int(e) for e in step_epochs)
        self.gamma = float(gamma)
        self.warmup = warmup
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)

    def __call__(self, step):
        # float64: gamma ** n and the warmup ratio as mmcv's Python floats compute them, then one rounding.
        it = tf.cast(step, tf.float64)
        boundaries = tf.constant([e * self.steps_per_epoch for e in self.step_epochs], tf.float64,
                                 [len(self.step_epochs)])
        passed = tf.reduce_sum(tf.cast(it >= boundaries, tf.float64))
        lr = self.base_lr * tf.pow(tf.constant(self.gamma, tf.float64), passed)
        if self.warmup is not None:
            if self.warmup == "linear":
                k = (1.0 - it / self.warmup_iters) * (1.0 - self.warmup_ratio)
                warm = lr * (1.0 - k)
            else:
                warm = lr * self.warmup_ratio
            lr = tf.where(it < self.warmup_iters, warm, lr)
        return tf.cast(lr, tf.float32)

    def get_config(self):
        return {"base_lr": self.base_lr, "steps_per_epoch": self.steps_per_epoch,
                "step_epochs": list(self.step_epochs), "gamma": self.gamma, "warmup": self.warmup,
                "warmup_iters": self.warmup_iters, "warmup_ratio": self.warmup_ratio}


def build_schedule(lr_cfg, base_lr, steps_per_epoch):
    """`WarmupStepSchedule` from an `LrCfg` (`cfg.lr_config`) and `cfg.optimizer.lr`.

    Args:
      lr_cfg: `tfrcnn.config.LrCfg`; policy `step`.
      base_lr: float, the lr after warmup and before any step.
      steps_per_epoch: int, optimizer updates per epoch (images per epoch // global batch).
    """
    if lr_cfg.policy != "step":
        raise ValueError(f"lr_config.policy: only 'step' is implemented, got {lr_cfg.policy!r}")
    return WarmupStepSchedule(base_lr, steps_per_epoch, lr_cfg.step, lr_cfg.gamma, lr_cfg.warmup,
                              lr_cfg.warmup_iters, lr_cfg.warmup_ratio)
