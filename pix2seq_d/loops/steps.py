"""Pure step functions of training: the train state, the optimiser, the diffusion loss and the
train step.

Nothing here calls `jax.jit`, holds shardings or does I/O; loops/state.py jits `train_step` with
the state's shardings (for the training loop and the benchmark). The model travels as
(graphdef, state) and is rebuilt with `nnx.merge` inside the traced function. Sampling masks is
models/sampling.py, called by the tasks' predict functions.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pix2seq_d.config import checks
from pix2seq_d.diffusion import bits, losses, schedules
from pix2seq_d.models import model as p2s


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
  """Everything a training run carries from step to step.

  Attributes:
    step: scalar int32 number of optimiser updates done.
    params: nnx.State of the model's nnx.Param leaves.
    model_state: nnx.State of the rest (BatchNorm statistics, dropout RNG streams, constants).
    opt_state: the optax state of `params`.
    ema_params, ema_model_state: exponential moving averages used for evaluation.
  """

  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  ema_params: Any
  ema_model_state: Any


LR_SCHEDULES = ('linear', 'constant')  # config.train.lr_schedule's values


def learning_rate_schedule(train_config) -> optax.Schedule:
  """Linear warm-up to the peak, then linear decay to peak * end_lr_factor (or constant)."""
  t = train_config
  checks.check_choice('train.lr_schedule', t.lr_schedule, LR_SCHEDULES)
  warmup = optax.linear_schedule(0.0, t.learning_rate, max(t.warmup_steps, 1))
  decay_steps = max(t.num_steps - t.warmup_steps, 1)
  if t.lr_schedule == 'linear':
    after = optax.linear_schedule(t.learning_rate, t.learning_rate * t.end_lr_factor, decay_steps)
  else:
    after = optax.constant_schedule(t.learning_rate)
  if t.warmup_steps <= 0:
    return after
  return optax.join_schedules([warmup, after], [t.warmup_steps])


def make_optimizer(train_config) -> optax.GradientTransformation:
  """AdamW with global-norm clipping and the learning-rate schedule (decay on all parameters)."""
  t = train_config
  return optax.chain(
    optax.clip_by_global_norm(t.grad_clip_norm),
    optax.adamw(
      learning_rate_schedule(t), b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay
    ),
  )


def create_train_state(model: p2s.Pix2SeqD, tx: optax.GradientTransformation) -> TrainState:
  """The initial state: optimiser state from the weights and the EMA equal to the weights."""
  _, params, model_state = nnx.split(model, nnx.Param, ...)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    model_state=model_state,
    opt_state=tx.init(params),
    ema_params=jax.tree.map(jnp.copy, params),
    ema_model_state=jax.tree.map(jnp.copy, model_state),
  )


def _slice_batch(tree, size):
  return jax.tree.map(lambda x: x[:size], tree)


def draw_noise(key: jax.Array, label_shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """The diffusion's random draws for labels of `label_shape` (B, Hm, Wm, 2): t (B,) ~ U(0, 1)
  and the noise (B, Hm, Wm, MASK_BITS) ~ N(0, I)."""
  t_key, noise_key = jax.random.split(key)
  t = jax.random.uniform(t_key, label_shape[:1])
  return t, jax.random.normal(noise_key, tuple(label_shape[:-1]) + (bits.MASK_BITS,))


def diffusion_loss(
  model: p2s.Pix2SeqD,
  batch: dict[str, jax.Array],
  key: jax.Array,
  config,
  draws: tuple[jax.Array, jax.Array] | None = None,
  cond: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The Pix2Seq-D loss of one batch.

  Args:
    model: the model in training mode.
    batch: 'image' (B, H, W, 3) float in [0, 1] and 'label' (B, Hm, Wm, 2) int ids (other arrays
      are the task's, read through `cond`).
    key: PRNG key of t and the noise (`draw_noise`).
    config: the experiment config (diffusion and model sections are read).
    draws: (t, noise) to use instead of drawing them from `key`.
    cond: (B, Hm, Wm, C) the denoiser's conditioning inputs (`Task.train_conditioning`: the
      earlier frames' bits of a video), or None.

  Returns:
    (loss, aux) where loss is the weighted softmax cross-entropy plus, when
    config.diffusion.semantic_aux_weight > 0, that weight times the class head's cross-entropy
    (aux 'semantic_loss'); aux holds scalar metrics.
  """
  d = config.diffusion
  label = batch['label'].astype(jnp.int32)
  batch_size = label.shape[0]
  x0 = bits.label_to_bits(label, d.b_scale)
  t, noise = draw_noise(key, label.shape) if draws is None else draws
  gamma = schedules.get_schedule(d.schedule)(t)
  x_t = schedules.q_sample(x0, gamma, noise)
  encoded = model.encode(batch['image'])

  extra = [] if cond is None else [cond]
  if d.self_cond:
    # A stop-gradient x0 estimate for the first `rate` of the batch, zeros for the rest.
    num_sc = int(batch_size * d.self_cond_rate)
    zeros = jnp.zeros_like(x0)
    estimate = zeros
    if num_sc:
      sc_extra = [e[:num_sc] for e in extra] + [zeros[:num_sc]]
      logits = model.denoise(
        x_t[:num_sc],
        gamma[:num_sc],
        _slice_batch(encoded, num_sc),
        jnp.concatenate(sc_extra, axis=-1),
      )
      estimate = jnp.concatenate([bits.logits_to_analog(logits, d.b_scale), zeros[num_sc:]], axis=0)
    extra.append(jax.lax.stop_gradient(estimate))
  logits = model.denoise(x_t, gamma, encoded, jnp.concatenate(extra, axis=-1) if extra else None)
  weights = losses.instance_pixel_weights(
    label[..., 1], config.model.max_instances, d.loss_weight_p
  )
  loss = losses.softmax_xent_loss(logits, label, weights)
  metrics = {'id_accuracy': jnp.mean(jnp.argmax(logits, axis=-1) == label)}
  if d.semantic_aux_weight:
    semantic = losses.semantic_loss(model.semantic_logits(encoded), label[..., 0])
    metrics['semantic_loss'] = semantic
    loss = loss + d.semantic_aux_weight * semantic
  return loss, {'loss': loss, **metrics}


def split_microbatches(tree, count: int):
  """Leaves (B, ...) -> (count, B / count, ...), microbatch j = rows j, j + count, j + 2 count, ...

  The batch is split over the devices in contiguous blocks of rows, so this takes the same
  number of rows from every device's block: each microbatch stays spread over all devices
  (when each device's rows divide by `count`).
  """

  def split(x):
    return jnp.swapaxes(x.reshape((x.shape[0] // count, count) + x.shape[1:]), 0, 1)

  return jax.tree.map(split, tree)


def microbatch_key(key: jax.Array, index, count: int) -> jax.Array:
  """The key of microbatch `index` of `count`; one microbatch keeps the step's key as it is."""
  return key if count == 1 else jax.random.fold_in(key, index)


def train_step(
  graphdef: nnx.GraphDef,
  state: TrainState,
  batch: dict[str, jax.Array],
  key: jax.Array,
  *,
  config,
  tx: optax.GradientTransformation,
  condition: Callable[[dict[str, jax.Array]], jax.Array | None] | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser update and EMA update; returns the new state and scalar metrics.

  `condition` (the task's `train_conditioning`) gives the denoiser's conditioning inputs of a
  (micro)batch; None conditions on nothing but the image.

  With config.train.microbatches = k > 1 the batch is split into k microbatches
  (`split_microbatches`) whose gradients are summed in a `lax.scan`, so only one microbatch's
  activations are alive at a time; the update is the one of their mean gradient. BatchNorm
  computes its statistics per microbatch, and its running averages are updated k times a step.
  Metrics are the means over the microbatches. `graphdef` must come from the model in training
  mode (`model.train()`).
  """
  count = int(config.train.microbatches)

  def loss_fn(params, model_state, micro_batch, micro_key):
    # The model is merged inside the differentiated function so that BatchNorm statistics and
    # RNG counters are updated at this trace level.
    model = nnx.merge(graphdef, params, model_state, copy=True)
    cond = None if condition is None else condition(micro_batch)
    loss, aux = diffusion_loss(model, micro_batch, micro_key, config, cond=cond)
    return loss, (aux, nnx.state(model, nnx.Not(nnx.Param)))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if count == 1:
    (_, (aux, model_state)), grads = grad_fn(state.params, state.model_state, batch, key)
  else:

    def accumulate(carry, inputs):
      grad_sum, aux_sum, model_state = carry
      index, micro_batch = inputs
      (_, (aux, model_state)), grads = grad_fn(
        state.params, model_state, micro_batch, microbatch_key(key, index, count)
      )
      add = lambda total, new: jax.tree.map(jnp.add, total, new)
      return (add(grad_sum, grads), add(aux_sum, aux), model_state), None

    micro_batches = split_microbatches(batch, count)
    first = jax.tree.map(lambda x: x[0], micro_batches)
    _, (aux_shape, _) = jax.eval_shape(loss_fn, state.params, state.model_state, first, key)
    zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), tree)
    (grad_sum, aux_sum, model_state), _ = jax.lax.scan(
      accumulate,
      (zeros(state.params), zeros(aux_shape), state.model_state),
      (jnp.arange(count), micro_batches),
    )
    grads = jax.tree.map(lambda g: g / count, grad_sum)
    aux = jax.tree.map(lambda a: a / count, aux_sum)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = config.train.ema_decay
  ema = lambda old, new: jax.tree.map(
    lambda o, n: (
      (decay * o + (1.0 - decay) * n).astype(o.dtype)
      if jnp.issubdtype(o.dtype, jnp.floating)
      else n
    ),
    old,
    new,
  )
  new_state = TrainState(
    step=state.step + 1,
    params=params,
    model_state=model_state,
    opt_state=opt_state,
    ema_params=ema(state.ema_params, params),
    ema_model_state=ema(state.ema_model_state, model_state),
  )
  metrics = dict(aux)
  metrics['grad_norm'] = optax.tree.norm(grads)
  metrics['param_norm'] = optax.tree.norm(params)
  metrics['learning_rate'] = learning_rate_schedule(config.train)(state.step)
  return new_state, metrics
