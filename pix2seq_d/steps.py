"""Pure step functions: the diffusion loss, the train step, and mask sampling.

Nothing here calls `jax.jit`, holds shardings or does I/O; train.py and eval_loop.py jit these
functions with their shardings. The model travels as (graphdef, state) and is rebuilt with
`nnx.merge` inside the traced function.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pix2seq_d.diffusion import bits, losses, sampler, schedules
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


def learning_rate_schedule(train_config) -> optax.Schedule:
  """Linear warm-up to the peak, then linear decay to peak * end_lr_factor (or constant)."""
  t = train_config
  warmup = optax.linear_schedule(0.0, t.learning_rate, max(t.warmup_steps, 1))
  decay_steps = max(t.num_steps - t.warmup_steps, 1)
  if t.lr_schedule == 'linear':
    after = optax.linear_schedule(t.learning_rate, t.learning_rate * t.end_lr_factor, decay_steps)
  elif t.lr_schedule == 'constant':
    after = optax.constant_schedule(t.learning_rate)
  else:
    raise ValueError(f"config.train.lr_schedule={t.lr_schedule!r}: use 'linear' or 'constant'.")
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


def diffusion_loss(
  model: p2s.Pix2SeqD, batch: dict[str, jax.Array], key: jax.Array, config
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The Pix2Seq-D loss of one batch.

  Args:
    model: the model in training mode.
    batch: 'image' (B, H, W, 3) float in [0, 1], 'label' (B, Hm, Wm, 2) int ids, and for video
      'cond_label' (B, Hm, Wm, 2 * frames) int ids of earlier frames.
    key: PRNG key for t, the noise and self-conditioning.
    config: the experiment config (diffusion and model sections are read).

  Returns:
    (loss, aux) where loss is the weighted softmax cross-entropy plus, when
    config.diffusion.semantic_aux_weight > 0, that weight times the class head's cross-entropy
    (aux 'semantic_loss'); aux holds scalar metrics.
  """
  d = config.diffusion
  label = batch['label'].astype(jnp.int32)
  batch_size = label.shape[0]
  x0 = bits.label_to_bits(label, d.b_scale)
  t_key, noise_key = jax.random.split(key)
  t = jax.random.uniform(t_key, (batch_size,))
  gamma = schedules.get_schedule(d.schedule)(t)
  x_t = schedules.q_sample(x0, gamma, jax.random.normal(noise_key, x0.shape))
  encoded = model.encode(batch['image'])

  extra = []
  if 'cond_label' in batch:
    extra.append(bits.label_to_bits(batch['cond_label'].astype(jnp.int32), d.b_scale))
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


def train_step(
  graphdef: nnx.GraphDef,
  state: TrainState,
  batch: dict[str, jax.Array],
  key: jax.Array,
  *,
  config,
  tx: optax.GradientTransformation,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser update and EMA update; returns the new state and scalar metrics.

  `graphdef` must come from the model in training mode (`model.train()`).
  """

  def loss_fn(params, model_state):
    # The model is merged inside the differentiated function so that BatchNorm statistics and
    # RNG counters are updated at this trace level.
    model = nnx.merge(graphdef, params, model_state, copy=True)
    loss, aux = diffusion_loss(model, batch, key, config)
    return loss, (aux, nnx.state(model, nnx.Not(nnx.Param)))

  (_, (aux, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params, state.model_state
  )
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


def sample_bits(
  model: p2s.Pix2SeqD,
  images: jax.Array,
  key: jax.Array,
  config,
  cond_label: jax.Array | None = None,
  steps: int | None = None,
) -> jax.Array:
  """Samples analog mask bits for `images` with the encoder run once.

  Args:
    model: the model in evaluation mode (usually the EMA weights).
    images: (B, H, W, 3) in [0, 1].
    key: PRNG key of the initial noise.
    config: the experiment config.
    cond_label: (B, Hm, Wm, 2 * frames) int ids of earlier frames (video), or None.
    steps: sampling steps; defaults to config.diffusion.steps.

  Returns:
    (B, Hm, Wm, 16) float32 analog bits (the last x0 estimate).
  """
  d = config.diffusion
  encoded = model.encode(images)
  cond = None if cond_label is None else bits.label_to_bits(cond_label.astype(jnp.int32), d.b_scale)

  def predict_x0(x_t, gamma, x0_prev):
    extra = [] if cond is None else [cond]
    if d.self_cond:
      extra.append(x0_prev)
    logits = model.denoise(x_t, gamma, encoded, jnp.concatenate(extra, axis=-1) if extra else None)
    return bits.logits_to_analog(logits, d.b_scale)

  shape = (images.shape[0],) + tuple(model.mask_size) + (bits.MASK_BITS,)
  return sampler.sample(
    predict_x0,
    shape,
    key,
    steps=steps or d.steps,
    td=d.td,
    schedule=d.schedule,
    sampler=d.sampler,
    b_scale=d.b_scale,
    x0_clip=d.x0_clip,
  )


def predict_label(
  graphdef: nnx.GraphDef,
  params,
  model_state,
  images: jax.Array,
  key: jax.Array,
  *,
  config,
  cond_label: jax.Array | None = None,
  steps: int | None = None,
) -> jax.Array:
  """Samples and decodes masks: images (B, H, W, 3) -> (B, Hm, Wm, 2) int32 ids.

  `graphdef` must come from the model in evaluation mode (`model.eval()`).
  """
  model = nnx.merge(graphdef, params, model_state, copy=True)
  analog = sample_bits(model, images, key, config, cond_label, steps)
  return bits.bits_to_panoptic(analog, config.model.num_classes, config.model.max_instances)


def sample_video(
  model: p2s.Pix2SeqD,
  frames: jax.Array,
  key: jax.Array,
  config,
  *,
  first_steps: int,
  later_steps: int,
  gt_cond: jax.Array | None = None,
  single_frames: bool = False,
) -> jax.Array:
  """Streams a video through the model: each frame's mask conditioned on earlier frames' masks.

  The first frame is sampled with `first_steps` steps and the rest with `later_steps` inside one
  `jax.lax.scan` over frames (one compiled program for any number of frames); the encoder runs
  once per frame. Frame t is conditioned on the ids of frames t - n .. t - 1
  (n = config.diffusion.num_cond_frames, oldest first, zeros before the start): the model's own
  predictions, or the ground truth's with `gt_cond`; with `single_frames` on zeros, so every
  frame is segmented on its own. Frame t draws its noise from fold_in(key, t).

  Args:
    model: the video model in evaluation mode.
    frames: (B, T, H, W, 3) in [0, 1].
    key: PRNG key.
    config: the experiment config (diffusion, model).
    first_steps, later_steps: sampling steps of frame 0 and of frames 1..T-1.
    gt_cond: (B, T, Hm, Wm, 2) int ground-truth ids to condition on instead, or None.
    single_frames: condition every frame on zeros.

  Returns:
    (B, T, Hm, Wm, 2) int32 [semantic, instance] ids per frame.
  """
  num_cond = config.diffusion.num_cond_frames
  batch, num_frames = frames.shape[:2]
  zeros = jnp.zeros((batch, *model.mask_size, 2), jnp.int32)

  def predict(t, history, steps):
    labels = [zeros] * num_cond if single_frames else list(history)
    images = jax.lax.dynamic_index_in_dim(frames, t, axis=1, keepdims=False)
    analog = sample_bits(
      model, images, jax.random.fold_in(key, t), config, jnp.concatenate(labels, axis=-1), steps
    )
    return bits.bits_to_panoptic(analog, config.model.num_classes, config.model.max_instances)

  def advance(history, t, pred):
    """The conditioning history after frame t: its prediction (or ground truth) appended."""
    seen = pred if gt_cond is None else jax.lax.dynamic_index_in_dim(gt_cond, t, 1, False)
    return history[1:] + (seen.astype(jnp.int32),)

  history = (zeros,) * num_cond
  first = predict(0, history, first_steps)
  history = advance(history, 0, first)

  def step(history, t):
    pred = predict(t, history, later_steps)
    return advance(history, t, pred), pred

  _, later = jax.lax.scan(step, history, jnp.arange(1, num_frames))
  return jnp.concatenate([first[:, None], jnp.moveaxis(later, 0, 1)], axis=1)


def predict_video(
  graphdef: nnx.GraphDef,
  params,
  model_state,
  frames: jax.Array,
  gt_cond: jax.Array | None,
  key: jax.Array,
  *,
  config,
) -> jax.Array:
  """Streams videos through the model as config.eval says: frames (B, T, H, W, 3) ->
  (B, T, Hm, Wm, 2) int32 ids.

  Frame 0 takes config.diffusion.steps sampling steps and later frames
  config.diffusion.steps_later_frames; with config.eval.use_gt_cond_frames, frames are
  conditioned on `gt_cond` (B, T, Hm, Wm, 2) (None otherwise); with config.eval.single_frames on
  nothing. `graphdef` must come from the model in evaluation mode.
  """
  if config.eval.use_gt_cond_frames and gt_cond is None:
    raise ValueError('config.eval.use_gt_cond_frames is set: pass the ground-truth ids.')
  model = nnx.merge(graphdef, params, model_state, copy=True)
  return sample_video(
    model,
    frames,
    key,
    config,
    first_steps=config.diffusion.steps,
    later_steps=config.diffusion.steps_later_frames,
    gt_cond=gt_cond if config.eval.use_gt_cond_frames else None,
    single_frames=config.eval.single_frames,
  )
