"""Sampling masks from the model: the encoder once per image, the denoiser once per step.

`sample_bits` / `sample_ids` sample the mask of each image of a batch (conditioned on earlier
frames' ids when given); `sample_video` streams whole videos frame by frame inside one
`jax.lax.scan`. Pure functions of a merged model in evaluation mode: the tasks wrap them into the
predict functions that loops/state.py jits.
"""

import jax
import jax.numpy as jnp

from pix2seq_d.diffusion import bits, sampler
from pix2seq_d.models import model as p2s


def repeat_rows(tree, times: int):
  """Every array of `tree` with each row repeated `times` times in place: (B, ...) -> (B * times,
  ...), rows b * times .. b * times + times - 1 copies of row b."""
  if times == 1:
    return tree
  return jax.tree.map(lambda x: jnp.repeat(x, times, axis=0), tree)


def sample_bits(
  model: p2s.Pix2SeqD,
  images: jax.Array,
  key: jax.Array,
  config,
  cond_label: jax.Array | None = None,
  steps: int | None = None,
  num_samples: int = 1,
  refine: tuple[jax.Array, float] | None = None,
  given: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
  """Samples analog mask bits for `images` with the encoder run once.

  Args:
    model: the model in evaluation mode (usually the EMA weights).
    images: (B, H, W, 3) in [0, 1].
    key: PRNG key of the initial noise.
    config: the experiment config.
    cond_label: (B, Hm, Wm, 2 * frames) int ids of earlier frames (video), or None.
    steps: sampling steps; defaults to config.diffusion.steps.
    num_samples: K samples per image, each from its own noise: the encoder output is repeated,
      so the K denoiser passes of a step are one batch of B * K (1 is one sample, as before).
    refine: (ids (B, Hm, Wm, 2), t0): refine these masks from time t0 (`sampler.sample`'s start).
    given: (ids (B, Hm, Wm, 2), known (B, Hm, Wm) bool): hold these ids where known is set
      (`sampler.sample`'s known pixels).

  Returns:
    (B * K, Hm, Wm, 16) float32 analog bits (the last x0 estimate), the K samples of image b in
    rows b * K .. b * K + K - 1.
  """
  d = config.diffusion
  encoded = repeat_rows(model.encode(images), num_samples)
  cond = None if cond_label is None else bits.label_to_bits(cond_label.astype(jnp.int32), d.b_scale)
  cond = repeat_rows(cond, num_samples)

  def predict_x0(x_t, gamma, x0_prev):
    extra = [] if cond is None else [cond]
    if d.self_cond:
      extra.append(x0_prev)
    logits = model.denoise(x_t, gamma, encoded, jnp.concatenate(extra, axis=-1) if extra else None)
    return bits.logits_to_analog(logits, d.b_scale)

  shape = (images.shape[0] * num_samples,) + tuple(model.mask_size) + (bits.MASK_BITS,)
  start = known = None
  if refine is not None:
    ids, t0 = refine
    start = (repeat_rows(bits.label_to_bits(ids.astype(jnp.int32), d.b_scale), num_samples), t0)
  if given is not None:
    ids, mask = given
    known = repeat_rows(
      (bits.label_to_bits(ids.astype(jnp.int32), d.b_scale), mask[..., None]), num_samples
    )
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
    start=start,
    known=known,
  )


def sample_ids(
  model: p2s.Pix2SeqD, images: jax.Array, key: jax.Array, config, *args, **kwargs
) -> jax.Array:
  """Samples and decodes masks: images (B, H, W, 3) -> (B * K, Hm, Wm, 2) int32 [semantic,
  instance] ids. The other arguments (cond_label, steps, num_samples, refine, given) are
  `sample_bits`'s; the bits are thresholded and clamped to the id ranges."""
  analog = sample_bits(model, images, key, config, *args, **kwargs)
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
    return sample_ids(
      model, images, jax.random.fold_in(key, t), config, jnp.concatenate(labels, axis=-1), steps
    )

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
