"""The optimizer: MMDetection's `optimizer` and `optimizer_config` (SGD or AdamW, weight decay, grad clipping).

MMDetection trains with PyTorch's SGD, whose weight decay is an L2 term added to the gradient before the
momentum (Keras' `weight_decay` is decoupled: it shrinks the weights apart from the gradient), and whose
momentum buffer holds gradients, not lr-scaled steps (Keras' does; the two differ whenever the lr changes,
i.e. through the warmup and at each step). `SGD` below is Keras' SGD with PyTorch's update:

    g = clip_by_global_norm(g, max_norm)          optimizer_config.grad_clip (MMDetection's OptimizerHook)
    g = g + weight_decay * mult(w) * w            optimizer.weight_decay, paramwise_cfg multipliers
    v = momentum * v + g
    w = w - lr * v                                (nesterov: w = w - lr * (g + momentum * v))

Under `tf.distribute`, Keras sums the replicas' gradients inside the optimizer, after its own clipping and
decay hooks run; clipping a replica's partial gradient, or adding the decay once per replica, would change
the update with the number of replicas. `SGD` clips and decays after the sum, so the update is the same on
one device and on many. `AdamW` (MMDetection's `type: AdamW`, PyTorch's torch.optim.AdamW) does the same with
its decoupled decay. A train step should therefore pass raw gradients to `optimizer.apply`; the pure
functions `add_weight_decay` and `clip_gradients` are the same arithmetic for use outside an optimizer.
"""
import keras
import tensorflow as tf

from tfrcnn.config import ParamwiseCfg
from tfrcnn.training.schedule import build_schedule

NORM_LAYERS = (keras.layers.BatchNormalization, keras.layers.GroupNormalization, keras.layers.LayerNormalization)


def set_mixed_precision(policy=None):
    """Sets Keras' global dtype policy (`runtime.mixed_precision`): None is float32. Returns the policy."""
    keras.mixed_precision.set_dtype_policy(policy or "float32")
    return keras.mixed_precision.dtype_policy()


def decay_multipliers(model, paramwise_cfg=None, norm_layers=NORM_LAYERS):
    """Weight-decay multipliers, as mmcv's DefaultOptimizerConstructor assigns them.

    Args:
      model: a built Keras layer or model (its variables exist).
      paramwise_cfg: `ParamwiseCfg`; None is all multipliers 1.
      norm_layers: the layer classes whose trainable weights are "norm" weights.
    Returns:
      A list of floats aligned with `model.trainable_variables`: norm_decay_mult for the weights of norm
      layers (gamma and beta), bias_decay_mult for other variables named "bias", 1.0 for the rest.
    """
    cfg = paramwise_cfg or ParamwiseCfg()
    norm_ids = {id(v) for layer in model._flatten_layers() if isinstance(layer, norm_layers)
                for v in layer.trainable_weights}
    mults = []
    for v in model.trainable_variables:
        if id(v) in norm_ids:
            mults.append(float(cfg.norm_decay_mult))
        elif v.name == "bias":
            mults.append(float(cfg.bias_decay_mult))
        else:
            mults.append(1.0)
    return mults


def add_weight_decay(grads, variables, multipliers, weight_decay):
    """Coupled L2 decay, as PyTorch's SGD applies it: `g + weight_decay * mult * w`.

    Args:
      grads: list of gradient tensors (or None, kept as None).
      variables: the variables, aligned with `grads`.
      multipliers: floats aligned with `grads` (`decay_multipliers`); 0 leaves the gradient as is.
      weight_decay: float.
    """
    out = []
    for g, v, mult in zip(grads, variables, multipliers, strict=True):
        if g is not None and weight_decay * mult != 0:
            g = g + tf.cast(weight_decay * mult, g.dtype) * tf.cast(tf.convert_to_tensor(v), g.dtype)
        out.append(g)
    return out


def _check_grad_clip(grad_clip_cfg):
    if grad_clip_cfg is not None and grad_clip_cfg.norm_type != 2:
        raise ValueError("optimizer_config.grad_clip.norm_type: only the L2 norm (2) is implemented, "
                         f"got {grad_clip_cfg.norm_type}")


def clip_gradients(grads, grad_clip_cfg):
    """Clips the gradients' global L2 norm to `grad_clip_cfg.max_norm` (`torch.nn.utils.clip_grad_norm_`).

    Args:
      grads: list of tensors (None entries are skipped).
      grad_clip_cfg: `GradClipCfg` (`cfg.optimizer_config.grad_clip`) or None for no clipping.
    Returns:
      (grads, global_norm): the norm before clipping, float32 scalar; None when `grad_clip_cfg` is None.
    """
    if grad_clip_cfg is None:
        return list(grads), None
    _check_grad_clip(grad_clip_cfg)
    clipped, norm = tf.clip_by_global_norm(list(grads), grad_clip_cfg.max_norm)
    return clipped, norm


class _SummedGradientUpdates:
    """What `SGD` and `AdamW` share, before their Keras base class in the MRO: clipping of the replicas' summed
    gradient, per-variable decay multipliers (`set_decay_multipliers`), and `grad_norm`, a variable holding the
    global L2 norm of the last update's summed gradient before clipping (what MMDetection logs as grad_norm)."""

    def _refuse_keras_arguments(self, kwargs):
        for name in ("weight_decay", "clipnorm", "global_clipnorm", "clipvalue"):
            if kwargs.get(name) is not None:
                raise ValueError(f"tfrcnn {type(self).__name__}: {name} is Keras' (its own decay, or clipping before "
                                 "the gradients are summed over replicas); use the tfrcnn arguments for decay and "
                                 "grad_clip_norm")

    def _init_summed(self, grad_clip_norm):
        self.grad_clip_norm = None if grad_clip_norm is None else float(grad_clip_norm)
        self._decay_source = None
        self._decay_mults = ()

    def set_decay_multipliers(self, variables=None, multipliers=None, model=None, paramwise_cfg=None):
        """Per-variable decay multipliers: given `variables` + `multipliers`, or `model` + `paramwise_cfg`.

        With a model they are read (`decay_multipliers`) when the optimizer builds, so the model may still
        be unbuilt here. Variables without one decay with multiplier 1.
        """
        if model is not None:
            self._decay_source = lambda: (model.trainable_variables, decay_multipliers(model, paramwise_cfg))
        else:
            variables, multipliers = list(variables), [float(m) for m in multipliers]
            if len(variables) != len(multipliers):
                raise ValueError(f"{len(variables)} variables but {len(multipliers)} multipliers")
            self._decay_source = lambda: (variables, multipliers)
        if self.built:
            self._resolve_decay_mults()

    def _resolve_decay_mults(self):
        by_key = {}
        if self._decay_source is not None:
            variables, multipliers = self._decay_source()
            by_key = {self._var_key(v): float(m) for v, m in zip(variables, multipliers)}
        # A tuple: the optimizer's attribute tracking would wrap a list or dict.
        self._decay_mults = tuple(by_key.get(self._var_key(v), 1.0) for v in self._trainable_variables)

    def _decay_mult(self, variable):
        return self._decay_mults[self._get_variable_index(variable)]

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.grad_norm = self.add_variable((), initializer="zeros", dtype="float32", aggregation="only_first_replica",
                                           name="grad_norm")
        self._resolve_decay_mults()

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Keras' TensorFlow optimizer sums the replicas' gradients here; clip (and decay, in update_step) after
        # that sum.
        trainable_variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        grads_and_vars = self._all_reduce_sum_gradients(list(zip(grads, trainable_variables)))
        grads = [g for g, _ in grads_and_vars]
        norm = tf.linalg.global_norm(grads)
        self.grad_norm.assign(tf.cast(norm, tf.float32))
        if self.grad_clip_norm is not None:
            # Scaled only when the norm exceeds max_norm (torch's clip_grad_norm_ multiplies by exactly 1 below it):
            # most steps then skip a pass over every gradient.
            grads = tf.cond(norm > self.grad_clip_norm,
                            lambda: tf.clip_by_global_norm(grads, self.grad_clip_norm, use_norm=norm)[0],
                            lambda: list(grads))
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_tf_update_step, self._distribution_strategy,
            list(zip(grads, trainable_variables)), learning_rate)


@keras.saving.register_keras_serializable(package="tfrcnn")
class SGD(_SummedGradientUpdates, keras.optimizers.SGD):
    """keras.optimizers.SGD with PyTorch's update, coupled weight decay and clipping after the all-reduce.

    Args:
      learning_rate: float or schedule (`WarmupStepSchedule`).
      momentum: float; the buffer holds gradients, as PyTorch's.
      nesterov: bool.
      coupled_weight_decay: float, MMDetection's `optimizer.weight_decay` (Keras' decoupled `weight_decay`
        is refused).
      grad_clip_norm: float or None, `optimizer_config.grad_clip.max_norm`; clips the replicas' summed
        gradient. Keras' `clipnorm` / `global_clipnorm` (applied before the sum) are refused.
      **kwargs: the other arguments of `keras.optimizers.SGD`.
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, coupled_weight_decay=0.0,
                 grad_clip_norm=None, **kwargs):
        self._refuse_keras_arguments(kwargs)
        super().__init__(learning_rate=learning_rate, momentum=float(momentum), nesterov=nesterov, **kwargs)
        self._init_summed(grad_clip_norm)
        self.coupled_weight_decay = float(coupled_weight_decay)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        g = tf.cast(gradient, dtype)
        decay = self.coupled_weight_decay * self._decay_mult(variable)
        if decay != 0:
            g = g + tf.cast(decay, dtype) * variable
        lr = tf.cast(learning_rate, dtype)
        if self.momentum == 0:
            self.assign_sub(variable, lr * g)
            return
        # TensorFlow's fused kernel is PyTorch's momentum: accum = momentum * accum + g; w -= lr * accum (nesterov:
        # w -= lr * (g + momentum * accum)). One pass over each variable instead of a handful of elementwise ops.
        v = self.momentums[self._get_variable_index(variable)]
        tf.raw_ops.ResourceApplyMomentum(var=_handle(variable), accum=_handle(v), lr=lr, grad=g,
                                         momentum=tf.cast(self.momentum, dtype), use_nesterov=self.nesterov)

    def get_config(self):
        config = super().get_config()
        config.update(coupled_weight_decay=self.coupled_weight_decay, grad_clip_norm=self.grad_clip_norm)
        return config


@keras.saving.register_keras_serializable(package="tfrcnn")
class AdamW(_SummedGradientUpdates, keras.optimizers.Adam):
    """PyTorch's AdamW (what MMDetection's `optimizer.type: AdamW` builds), clipping after the all-reduce:

        g = clip_by_global_norm(g, max_norm)          optimizer_config.grad_clip
        w = w - lr * weight_decay * mult(w) * w       decoupled decay, paramwise_cfg multipliers
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g^2
        w = w - lr / (1 - beta_1^t) * m / (sqrt(v / (1 - beta_2^t)) + eps)

    Keras' Adam puts eps outside the bias correction (`sqrt(v) + eps` with the correction folded into the lr), and
    its AdamW decays after the update instead of before; this follows PyTorch's arithmetic.

    Args:
      learning_rate: float or schedule. betas: (beta_1, beta_2). eps: float.
      decoupled_weight_decay: float, MMDetection's `optimizer.weight_decay` for AdamW.
      grad_clip_norm: as `SGD`'s.
      **kwargs: the other arguments of `keras.optimizers.Adam` (not amsgrad).
    """

    def __init__(self, learning_rate=0.001, betas=(0.9, 0.999), eps=1e-8, decoupled_weight_decay=0.01,
                 grad_clip_norm=None, **kwargs):
        self._refuse_keras_arguments(kwargs)
        for name in ("beta_1", "beta_2", "epsilon", "amsgrad"):
            kwargs.pop(name, None)  # get_config's Keras names; `betas` and `eps` carry them
        super().__init__(learning_rate=learning_rate, beta_1=float(betas[0]), beta_2=float(betas[1]),
                         epsilon=float(eps), **kwargs)
        self._init_summed(grad_clip_norm)
        self.decoupled_weight_decay = float(decoupled_weight_decay)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        decay = self.decoupled_weight_decay * self._decay_mult(variable)
        if decay != 0:
            self.assign_sub(variable, lr * tf.cast(decay, dtype) * variable)
        t = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        beta_1_power, beta_2_power = tf.pow(beta_1, t), tf.pow(beta_2, t)
        # TensorFlow's fused kernel computes w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon); with
        # epsilon = eps * sqrt(1 - b2^t) that is PyTorch's lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps).
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(self._momentums[index]), v=_handle(self._velocities[index]),
            beta1_power=beta_1_power, beta2_power=beta_2_power, lr=lr, beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype) * tf.sqrt(1.0 - beta_2_power), grad=tf.cast(gradient, dtype))

    def get_config(self):
        config = super().get_config()
        config.update(betas=(self.beta_1, self.beta_2), eps=self.epsilon,
                      decoupled_weight_decay=self.decoupled_weight_decay, grad_clip_norm=self.grad_clip_norm)
        return config


def _handle(variable):
    """The resource handle of a Keras or TensorFlow variable (on this replica), for TensorFlow's fused updates."""
    return variable.value.handle if isinstance(variable, keras.Variable) else variable.handle


def build_optimizer(cfg, steps_per_epoch, model=None):
    """The optimizer of `cfg.optimizer` (SGD or AdamW), with `cfg.lr_config`'s schedule and
    `cfg.optimizer_config.grad_clip`.

    Args:
      cfg: `tfrcnn.config.Config`.
      steps_per_epoch: int, optimizer updates per epoch (for the epoch-based lr steps).
      model: the model to train; needed when `paramwise_cfg` has a multiplier other than 1 (norm and bias
        weights are found by walking its layers when the optimizer builds).
    Returns:
      `SGD` (a `keras.optimizers.SGD`) or `AdamW` (a `keras.optimizers.Adam`), neither with Keras' own
      `weight_decay`.
    """
    opt, clip = cfg.optimizer, cfg.optimizer_config.grad_clip
    _check_grad_clip(clip)
    common = dict(learning_rate=build_schedule(cfg.lr_config, opt.lr, steps_per_epoch),
                  grad_clip_norm=None if clip is None else clip.max_norm)
    if opt.type == "AdamW":
        optimizer = AdamW(betas=opt.betas, eps=opt.eps, decoupled_weight_decay=opt.weight_decay, **common)
    else:
        optimizer = SGD(momentum=opt.momentum, coupled_weight_decay=opt.weight_decay, **common)
    if model is not None:
        optimizer.set_decay_multipliers(model=model, paramwise_cfg=opt.paramwise_cfg)
    elif opt.weight_decay != 0 and (opt.paramwise_cfg.norm_decay_mult != 1 or opt.paramwise_cfg.bias_decay_mult != 1):
        raise ValueError("optimizer.paramwise_cfg sets decay multipliers other than 1: pass the model to "
                         "build_optimizer so that its norm and bias weights can be found")
    return optimizer
