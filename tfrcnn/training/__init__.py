"""Training utilities: the lr schedule, MMDetection's SGD, and a distributed loop for multi-worker runs."""
from tfrcnn.training.distributed import CustomLoop, make_strategy, train_loop
from tfrcnn.training.optimizer import (SGD, add_weight_decay, build_optimizer, clip_gradients, decay_multipliers,
                                       set_mixed_precision)
from tfrcnn.training.schedule import WarmupStepSchedule, build_schedule
from tfrcnn.training.trainer import configure_determinism

__all__ = ["CustomLoop", "SGD", "WarmupStepSchedule", "add_weight_decay", "build_optimizer", "build_schedule",
           "clip_gradients", "configure_determinism", "decay_multipliers", "make_strategy", "set_mixed_precision",
           "train_loop"]
