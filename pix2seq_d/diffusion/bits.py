"""The one place that defines how masks become analog bits.

An integer map becomes bits least-significant first (bit_i = (x >> i) & 1) and each bit an analog
value (2 * bit - 1) * b_scale. A panoptic label (..., 2) = [semantic, instance] becomes 16 bits
[sem b0..b7, inst b0..b7]; more channels (the earlier frames of a video) simply continue the
pattern, 8 bits per channel.
"""

import jax
import jax.numpy as jnp

BITS_PER_CHANNEL = 8  # each channel holds ids 0..255.
NUM_CHANNELS = 2  # semantic, instance.
MASK_BITS = BITS_PER_CHANNEL * NUM_CHANNELS


def int_to_bits(x: jax.Array, num_bits: int = BITS_PER_CHANNEL) -> jax.Array:
  """(...) int -> (..., num_bits) int32 in {0, 1}, least significant bit first."""
  shifts = jnp.arange(num_bits, dtype=jnp.int32)
  return jnp.right_shift(x.astype(jnp.int32)[..., None], shifts) & 1


def bits_to_int(b: jax.Array) -> jax.Array:
  """(..., num_bits) in {0, 1} -> (...) int32, least significant bit first."""
  weights = jnp.left_shift(1, jnp.arange(b.shape[-1], dtype=jnp.int32))
  return jnp.sum(b.astype(jnp.int32) * weights, axis=-1)


def to_analog(b: jax.Array, b_scale: float) -> jax.Array:
  """{0, 1} bits -> float32 (2 * bit - 1) * b_scale."""
  return (2.0 * b.astype(jnp.float32) - 1.0) * b_scale


def label_to_bits(label: jax.Array, b_scale: float) -> jax.Array:
  """(..., C) int ids in 0..255 -> (..., 8 * C) analog bits, channel after channel."""
  b = int_to_bits(label)  # (..., C, 8)
  return to_analog(b.reshape(label.shape[:-1] + (-1,)), b_scale)


def bits_to_label(analog: jax.Array) -> jax.Array:
  """(..., 8 * C) analog bits -> (..., C) int32 ids, thresholding at 0."""
  b = (analog > 0).reshape(analog.shape[:-1] + (-1, BITS_PER_CHANNEL))
  return bits_to_int(b)


def bits_to_panoptic(analog: jax.Array, num_classes: int, max_instances: int) -> jax.Array:
  """(..., 16) analog bits -> (..., 2) [semantic, instance], clamped to the valid id ranges."""
  label = bits_to_label(analog)
  limits = jnp.array([num_classes - 1, max_instances - 1], jnp.int32)
  return jnp.minimum(label, limits)


def bit_table(num_bits: int = BITS_PER_CHANNEL) -> jax.Array:
  """(2^num_bits, num_bits) float32: row k holds the bits of k, least significant first."""
  return int_to_bits(jnp.arange(2**num_bits), num_bits).astype(jnp.float32)


def logits_to_analog(logits: jax.Array, b_scale: float) -> jax.Array:
  """Expected analog bits under the per-group softmax.

  (..., G, 2^k) logits -> (..., G * k): softmax(logits_g) @ bit table, mapped to [-b, b].
  """
  num_bits = logits.shape[-1].bit_length() - 1
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  expected = probs @ bit_table(num_bits)  # (..., G, k) in [0, 1]
  return ((2.0 * expected - 1.0) * b_scale).reshape(logits.shape[:-2] + (-1,))
