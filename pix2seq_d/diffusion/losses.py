"""The Pix2Seq-D training loss: softmax cross-entropy of the 8-bit groups, pixel-weighted, and the
optional auxiliary class loss of the encoder's class head."""

import jax
import jax.numpy as jnp


def instance_pixel_weights(instance: jax.Array, num_ids: int, p: float) -> jax.Array:
  """Per-pixel weights that favour small instances.

  w_k = (1 / (count_k + 1)) ** p for each instance id k (id 0 included), normalised to mean 1
  over each image.

  Args:
    instance: (B, H, W) int instance ids in [0, num_ids).
    num_ids: number of possible ids (max_instances).
    p: the exponent (0.2 in the paper; 0 gives uniform weights).

  Returns:
    (B, H, W) float32 weights with mean 1 per image.
  """
  flat = instance.reshape(instance.shape[0], -1)
  counts = jax.vmap(lambda ids: jnp.bincount(ids, length=num_ids))(flat)
  per_id = (1.0 / (counts.astype(jnp.float32) + 1.0)) ** p
  weights = jnp.take_along_axis(per_id, flat, axis=1)
  weights = weights / jnp.mean(weights, axis=1, keepdims=True)
  return weights.reshape(instance.shape)


@jax.checkpoint
def softmax_xent_loss(logits: jax.Array, label: jax.Array, weights: jax.Array) -> jax.Array:
  """Weighted cross-entropy of each channel's 256-way softmax against its integer id.

  Computed in float32. Rematerialised: the backward pass keeps the logits in their own dtype
  (bfloat16 on accelerators) and recomputes the float32 log-softmax, instead of keeping it (the
  largest single activation of the COCO model: 512 MiB per 512x512 mask).

  Args:
    logits: (B, H, W, G, K) logits, one K-way softmax per channel group.
    label: (B, H, W, G) int target ids in [0, K).
    weights: (B, H, W) pixel weights.

  Returns:
    Scalar float32: mean over (B, H, W, G) of weight * cross-entropy.
  """
  logits = logits.astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, label[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return jnp.mean(nll * weights[..., None])


def semantic_loss(logits: jax.Array, semantic: jax.Array) -> jax.Array:
  """Mean cross-entropy of per-pixel class logits, the auxiliary loss of the class head.

  Args:
    logits: (B, H, W, K) class logits.
    semantic: (B, H, W) int class ids in [0, K).

  Returns:
    Scalar float32, every pixel weighted equally.
  """
  return softmax_xent_loss(logits[..., None, :], semantic[..., None], jnp.ones(semantic.shape))
