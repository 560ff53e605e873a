"""Building blocks shared by the Pix2Seq-D modules (Flax NNX).

Every parameter carries logical axis names in its `out_sharding` metadata so that
`pix2seq_d.parallel.sharding` maps them to mesh axes through a rule table without touching model
code:

  embed     width of a transformer's residual stream
  mlp       hidden width of a transformer MLP, or of the time-embedding MLP
  heads     flattened (num_heads * head_dim) width of attention projections
  conv_in   input channels of a convolution
  conv_out  output channels of a convolution
  norm      scale / bias of a normalisation layer (always replicated)

Mixed precision: parameters are stored in `param_dtype` (float32); matmuls and convolutions run in
the compute `dtype` (bfloat16 on accelerators); normalisations and softmax run in float32.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pix2seq_d.models import attention

Dtype = Any

# Rematerialisation policies (config.model.remat.*): what a rematerialised block keeps from its
# forward pass; everything else is recomputed in the backward pass.
#   none                               no rematerialisation: every activation is kept.
#   nothing_saveable                   keep only the block's inputs (least memory, most recompute).
#   dots_saveable                      keep matmul and convolution outputs, recompute the rest
#                                      (norms, activations, softmax).
#   dots_with_no_batch_dims_saveable   keep only weight matmuls (not attention's Q K^T or P V).
REMAT_POLICIES = ('none', 'nothing_saveable', 'dots_saveable', 'dots_with_no_batch_dims_saveable')


@dataclasses.dataclass(frozen=True)
class Precision:
  """Numerics shared by all layers of one model.

  Attributes:
    dtype: compute dtype of matmuls and convolutions.
    param_dtype: storage dtype of parameters.
    attention_impl: a resolved implementation of `models.attention` ('xla', 'cudnn', 'splash',
      'chunked').
    attention_block: the token tile of the 'splash' and 'chunked' implementations.
    cudnn_seq_multiple: 'cudnn' pads sequences to multiples of this.
    attention_fallback: what 'cudnn' falls back to where cuDNN refuses a shape ('' = an error).
  """

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = 'xla'
  attention_block: int = 512
  cudnn_seq_multiple: int = 64
  attention_fallback: str = ''


def sharding_metadata(axes: Sequence[str | None]) -> dict[str, Any]:
  """Variable metadata naming one logical axis per dimension (see the module docstring).

  The names go under flax NNX's standard key `out_sharding`, so flax's own tools read them
  (`nnx.get_partition_spec` under `nnx.logical_axis_rules(sharding.rule_pairs())`). Eager
  sharding at creation is off: it would need a mesh wherever a module is built and would bypass
  `sharding.logical_to_spec`, which replicates a dimension that does not divide its mesh axes.
  """
  return {'out_sharding': tuple(axes), 'eager_sharding': False}


def variance_scaling(scale: float) -> nnx.Initializer:
  """Uniform fan-average variance scaling: the TF reference's initialiser for every kernel."""
  return nnx.initializers.variance_scaling(scale, 'fan_avg', 'uniform')


def keras_attention_init(shape_3d: tuple[int, int, int]) -> nnx.Initializer:
  """Glorot-uniform over the 3-D kernel of Keras' MultiHeadAttention, drawn as our 2-D kernel.

  Keras keeps the query / key / value kernels as (in, heads, head_dim) and the output kernel as
  (heads, head_dim, out), and counts fans over those shapes: fan_in = shape[-2] * r, fan_out =
  shape[-1] * r with r the product of the leading dimension. The reference was trained from that
  initialisation (limit sqrt(6 / (in * (heads + head_dim))) for a query kernel, several times
  smaller than a 2-D glorot's); the draw is reshaped to our (in, heads * head_dim) layout.
  """
  keras = nnx.initializers.variance_scaling(1.0, 'fan_avg', 'uniform', in_axis=-2, out_axis=-1)

  def init(key, shape, dtype=jnp.float32):
    if math.prod(shape) != math.prod(shape_3d):
      raise ValueError(f'kernel {shape} does not hold the Keras kernel {shape_3d}.')
    return keras(key, shape_3d, dtype).reshape(shape)

  return init


def dense(
  in_features: int,
  out_features: int,
  axes: tuple[str | None, str | None],
  precision: Precision,
  *,
  rngs: nnx.Rngs,
  init_scale: float = 1.0,
  use_bias: bool = True,
  kernel_init: nnx.Initializer | None = None,
) -> nnx.Linear:
  """A dense layer (in, out) whose kernel and bias carry logical axis names."""
  return nnx.Linear(
    in_features,
    out_features,
    use_bias=use_bias,
    dtype=precision.dtype,
    param_dtype=precision.param_dtype,
    kernel_init=kernel_init or variance_scaling(init_scale),
    kernel_metadata=sharding_metadata(axes),
    bias_metadata=sharding_metadata((axes[1],)),
    rngs=rngs,
  )


def conv(
  in_features: int,
  out_features: int,
  kernel_size: int,
  precision: Precision,
  *,
  rngs: nnx.Rngs,
  strides: int = 1,
  use_bias: bool = True,
  init_scale: float = 1.0,
  kernel_init: nnx.Initializer | None = None,
  padding: str | Sequence[tuple[int, int]] = 'SAME',
) -> nnx.Conv:
  """A 2-D conv on (B, H, W, C); kernel (k, k, in, out) axes (-, -, conv_in, conv_out).

  padding: 'SAME', 'VALID' or explicit ((top, bottom), (left, right)) zero padding.
  """
  return nnx.Conv(
    in_features,
    out_features,
    kernel_size=(kernel_size, kernel_size),
    strides=(strides, strides),
    padding=padding,
    use_bias=use_bias,
    dtype=precision.dtype,
    param_dtype=precision.param_dtype,
    kernel_init=kernel_init or variance_scaling(init_scale),
    kernel_metadata=sharding_metadata((None, None, 'conv_in', 'conv_out')),
    bias_metadata=sharding_metadata(('conv_out',)),
    rngs=rngs,
  )


class _AffineNorm(nnx.Module):
  """Scale and bias of a normalisation (logical axis `norm`), applied in float32."""

  def __init__(self, num_features: int, epsilon: float, precision: Precision):
    self.epsilon = epsilon
    self.scale = nnx.Param(
      jnp.ones((num_features,), precision.param_dtype), **sharding_metadata(('norm',))
    )
    self.bias = nnx.Param(
      jnp.zeros((num_features,), precision.param_dtype), **sharding_metadata(('norm',))
    )

  def _affine(self, normalized: jax.Array, dtype) -> jax.Array:
    """float32 (..., C) -> normalized * scale + bias in `dtype`."""
    scale = self.scale[...].astype(jnp.float32)
    return (normalized * scale + self.bias[...].astype(jnp.float32)).astype(dtype)


class GroupNorm(_AffineNorm):
  """GroupNorm over the channel axis computed in float32; groups = min(C // 4, max_groups)."""

  def __init__(self, num_features: int, max_groups: int, epsilon: float, precision: Precision):
    self.num_groups = max(1, min(num_features // 4, max_groups))
    if num_features % self.num_groups:
      raise ValueError(
        f'GroupNorm: {num_features} channels do not split into {self.num_groups} groups.'
      )
    super().__init__(num_features, epsilon, precision)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, ..., C) -> (B, ..., C) in x's dtype."""
    dtype = x.dtype
    x = x.astype(jnp.float32)
    grouped = x.reshape(x.shape[:-1] + (self.num_groups, -1))
    reduce_axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
    mean = grouped.mean(axis=reduce_axes, keepdims=True)
    var = jnp.square(grouped - mean).mean(axis=reduce_axes, keepdims=True)
    grouped = (grouped - mean) * jax.lax.rsqrt(var + self.epsilon)
    return self._affine(grouped.reshape(x.shape), dtype)


class LayerNorm(_AffineNorm):
  """LayerNorm over the last axis computed in float32."""

  def __call__(self, x: jax.Array) -> jax.Array:
    """(..., C) -> (..., C) in x's dtype."""
    dtype = x.dtype
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return self._affine((x - mean) * jax.lax.rsqrt(var + self.epsilon), dtype)


class DropPath(nnx.Module):
  """Stochastic depth: drops a whole residual branch per example with probability `rate`."""

  def __init__(self, rate: float, *, rngs: nnx.Rngs):
    self.rate = rate
    self.deterministic = False
    self.rngs = rngs.fork() if rate > 0 else None

  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, ...) -> (B, ...)."""
    if self.deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.rngs.dropout(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


class Attention(nnx.Module):
  """Multi-head attention through `models.attention` (the implementation is `precision`'s).

  Query / key / value / output projections are dense layers of width num_heads * head_dim
  (4 * d * d + 4 * d parameters, as the TF reference), initialised as Keras' MultiHeadAttention
  (`keras_attention_init`).
  """

  def __init__(
    self,
    dim: int,
    num_heads: int,
    precision: Precision,
    *,
    rngs: nnx.Rngs,
    kv_dim: int | None = None,
  ):
    if dim % num_heads:
      raise ValueError(f'attention width {dim} is not divisible by num_heads={num_heads}.')
    kv_dim = kv_dim or dim
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.precision = precision
    heads = (num_heads, self.head_dim)
    project = lambda features: dense(
      features,
      dim,
      ('embed', 'heads'),
      precision,
      rngs=rngs,
      kernel_init=keras_attention_init((features, *heads)),
    )
    self.query = project(dim)
    self.key = project(kv_dim)
    self.value = project(kv_dim)
    self.out = dense(
      dim,
      dim,
      ('heads', 'embed'),
      precision,
      rngs=rngs,
      kernel_init=keras_attention_init((*heads, dim)),
    )

  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    """x (B, L, D), context (B, S, Dkv) or None for self-attention -> (B, L, D)."""
    context = x if context is None else context
    split = lambda t: t.reshape(t.shape[:2] + (self.num_heads, self.head_dim))
    query = split(self.query(x))
    key = split(self.key(context))
    value = split(self.value(context))
    # Softmax runs in float32 inside every implementation; inputs stay in the compute dtype.
    attended = attention.attend(
      query,
      key,
      value,
      implementation=self.precision.attention_impl,
      block=self.precision.attention_block,
      cudnn_multiple=self.precision.cudnn_seq_multiple,
      fallback=self.precision.attention_fallback,
    )
    return self.out(attended.reshape(x.shape[:2] + (-1,)))


class Mlp(nnx.Module):
  """Transformer MLP: dense -> GELU -> dropout -> dense."""

  def __init__(
    self, dim: int, hidden_dim: int, dropout: float, precision: Precision, *, rngs: nnx.Rngs
  ):
    self.fc1 = dense(dim, hidden_dim, ('embed', 'mlp'), precision, rngs=rngs)
    self.fc2 = dense(hidden_dim, dim, ('mlp', 'embed'), precision, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, L, D) -> (B, L, D)."""
    return self.fc2(self.dropout(jax.nn.gelu(self.fc1(x), approximate=False)))


def sincos_2d(
  height: int, width: int, dim: int, max_position: float, temperature: float = 10_000.0
) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding, (height * width, dim), row-major tokens.

  Row and column indices are scaled to [0, max_position] over the grid (index / (n - 1) *
  max_position; the Pix2Seq-D reference uses 2 pi), so a position means the same place in the
  image at any grid size and the lowest frequency spans the image once. The first half of the
  channels encodes y, the second half x; each half is [sin, cos] of
  position * temperature ** (-k / (dim / 4)), k = 0 .. dim / 4 - 1.
  """
  if dim % 4:
    raise ValueError(f'2-D sin-cos position embedding needs a width divisible by 4, got {dim}.')
  quarter = dim // 4
  omega = temperature ** (-np.arange(quarter, dtype=np.float64) / quarter)

  def encode(positions):
    angles = positions[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  def scaled(n):
    return np.arange(n, dtype=np.float64) / max(n - 1, 1) * max_position

  y, x = np.meshgrid(scaled(height), scaled(width), indexing='ij')
  emb = np.concatenate([encode(y.reshape(-1)), encode(x.reshape(-1))], axis=1)
  return emb.astype(np.float32)


def scalar_embedding(values: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal embedding of scalars: (B,) -> (B, dim), [sin | cos], frequencies p^(-2k/dim)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) * 2.0 / dim)
  angles = values.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
  """(B, H, W, C) -> (B, H * factor, W * factor, C) by repetition."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def maybe_remat(fn, policy: str):
  """`fn` rematerialised under the named policy (one of REMAT_POLICIES; 'none' returns `fn`)."""
  if policy not in REMAT_POLICIES:
    raise ValueError(f'remat policy {policy!r}: use one of {", ".join(REMAT_POLICIES)}.')
  if policy == 'none':
    return fn
  return nnx.remat(fn, policy=getattr(jax.checkpoint_policies, policy))


def count_params(tree: Any) -> int:
  """Number of scalars in the nnx.Param leaves of a module or state (abstract or concrete)."""
  state = nnx.state(tree, nnx.Param) if isinstance(tree, nnx.Module) else tree
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(state)))


def static_tuple(values: Sequence[int]) -> tuple[int, ...]:
  """Config sequences (lists after a command-line override) as hashable int tuples."""
  return tuple(int(v) for v in values)
