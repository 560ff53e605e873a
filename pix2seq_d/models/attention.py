"""Scaled dot-product attention, softmax(Q K^T / sqrt(D)) V, by one of several implementations.

Every implementation computes the same exact attention over all real tokens; they differ in how
the (L, S) score matrix is materialised, which decides what fits in memory at the TransUNet
bottleneck (64x64 mask tokens + 1 time token = 4097 tokens at 512x512 masks):

  xla      the reference: `jax.nn.dot_product_attention(implementation='xla')`. Keeps every
           (B, H, L, S) probability matrix for the backward pass, so its memory grows with tokens
           squared (about 24 GiB per 1024x1024 image in the COCO train step).
  cudnn    cuDNN's fused flash attention (GPU, bfloat16 / float16). cuDNN trains only on sequence
           lengths that are multiples of 64, so L and S are zero-padded up to a multiple of
           config.model.cudnn_seq_multiple and the padded keys are masked out through
           `key_value_seq_lengths`; padded queries are dropped. Chosen by 'auto', a call cuDNN
           refuses while tracing runs 'chunked' instead, with one warning naming the reason.
  splash   the Pallas TPU splash-attention kernel (`jax.experimental.pallas.ops.tpu`). L and S are
           padded to a multiple of the kernel's block; segment ids keep real and padded tokens
           apart. On other backends it runs in Pallas interpret mode (slow; for tests).
  chunked  memory-efficient attention in plain JAX (flash-attention's algorithm): keys and values
           are visited in blocks with an online softmax, and a custom VJP recomputes each block's
           probabilities in the backward pass from the saved log-sum-exp. Memory grows linearly
           with tokens; it runs on every backend.

`resolve` maps 'auto' to the right one for the backend and compute dtype.

Shapes: query (B, L, H, D); key, value (B, S, H, D); result (B, L, H, D) in query's dtype.
"""

import functools
import math

import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import PartitionSpec

from pix2seq_d.config import checks

IMPLEMENTATIONS = ('auto', 'xla', 'cudnn', 'splash', 'chunked')
# cuDNN's fused attention supports training only on sequence lengths that are multiples of 64
# (config.model.cudnn_seq_multiple picks a multiple of it).
CUDNN_SEQ_MULTIPLE = 64
# Errors jax.nn.dot_product_attention raises while tracing when cuDNN cannot take a call (an
# unsupported length or head size, no cuDNN on the machine).
CUDNN_REFUSALS = (NotImplementedError, ValueError, RuntimeError)
_warned_fallbacks: set[str] = set()
# The splash kernel's tiles are multiples of the TPU vector lane count.
SPLASH_BLOCK_MULTIPLE = 128
# The mesh axis that splits attention heads (pix2seq_d.parallel.sharding maps the logical 'heads'
# axis to it); every other mesh axis splits the batch.
HEADS_MESH_AXIS = 'model'


def resolve(name: str, dtype, backend: str | None = None) -> str:
  """The implementation `name` stands for on `backend` (default: JAX's default backend).

  'auto' -> 'cudnn' on GPU with a half-precision dtype, 'splash' on TPU, 'chunked' elsewhere
  (CPU, or GPU in float32, where cuDNN's flash attention does not apply).
  """
  checks.check_choice('model.attention_impl', name, IMPLEMENTATIONS)
  if name != 'auto':
    return name
  backend = backend or jax.default_backend()
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  if backend == 'gpu' and half:
    return 'cudnn'
  if backend == 'tpu':
    return 'splash'
  return 'chunked'


def _round_up(length: int, multiple: int) -> int:
  return -(-length // multiple) * multiple


def _pad_tokens(x: jax.Array, length: int) -> jax.Array:
  """(B, L, H, D) -> (B, length, H, D), zeros after the first L tokens."""
  return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))


# ------------------------------------------------------------------------------------- xla
def xla(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  """The reference: one (B, H, L, S) score matrix, kept for the backward pass."""
  return jax.nn.dot_product_attention(query, key, value, implementation='xla')


# ------------------------------------------------------------------------------------ cudnn
def padded_fused(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  *,
  multiple: int,
  implementation: str = 'cudnn',
) -> jax.Array:
  """Fused attention on lengths padded to `multiple`, padded keys masked, padded queries dropped.

  `implementation` is passed to `jax.nn.dot_product_attention`; 'cudnn' on GPUs ('xla' runs the
  same padding and masking anywhere, which is how the CPU tests check it).
  """
  batch, length, source = query.shape[0], query.shape[1], key.shape[1]
  padded_length, padded_source = _round_up(length, multiple), _round_up(source, multiple)
  if (padded_length, padded_source) == (length, source):
    return jax.nn.dot_product_attention(query, key, value, implementation=implementation)
  kv_lengths = jnp.full((batch,), source, jnp.int32)
  attended = jax.nn.dot_product_attention(
    _pad_tokens(query, padded_length),
    _pad_tokens(key, padded_source),
    _pad_tokens(value, padded_source),
    key_value_seq_lengths=kv_lengths,
    implementation=implementation,
  )
  return attended[:, :length]


def cudnn(
  query: jax.Array, key: jax.Array, value: jax.Array, *, multiple: int = CUDNN_SEQ_MULTIPLE
) -> jax.Array:
  """cuDNN flash attention with L and S padded to multiples of `multiple` (of 64)."""
  if multiple % CUDNN_SEQ_MULTIPLE:
    raise ValueError(
      f'config.model.cudnn_seq_multiple={multiple}: cuDNN trains on multiples of '
      f'{CUDNN_SEQ_MULTIPLE}; use one of them.'
    )
  return padded_fused(query, key, value, multiple=multiple, implementation='cudnn')


# ----------------------------------------------------------------------------------- splash
def _splash_kernel(num_heads: int, length: int, source: int, block: int, interpret: bool):
  """A non-causal splash-attention kernel for (H, length, D) x (H, source, D) inputs.

  Built anew at each trace (not cached): the kernel holds arrays made in the calling trace.
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_kernel as kernel_lib,
  )
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

  sizes = kernel_lib.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    block_q_dq=block,
    block_kv_dq=block,
  )
  mask = mask_lib.MultiHeadMask([mask_lib.FullMask((length, source))] * num_heads)
  return kernel_lib.make_splash_mha(
    mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret
  )


def splash(
  query: jax.Array, key: jax.Array, value: jax.Array, *, block: int, interpret: bool | None = None
) -> jax.Array:
  """Pallas splash attention; L and S padded to multiples of `block`, padding kept apart.

  Args:
    query, key, value: as the module docstring.
    block: the kernel's query and key tile (a multiple of 128 on TPUs).
    interpret: run the kernel in Pallas interpret mode; default: on any backend but TPU.
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_kernel as kernel_lib,
  )

  if block % SPLASH_BLOCK_MULTIPLE:
    raise ValueError(
      f'config.model.attention_block={block}: the splash kernel needs a multiple '
      f'of {SPLASH_BLOCK_MULTIPLE}.'
    )
  if interpret is None:
    interpret = jax.default_backend() != 'tpu'
  length, source, num_heads, head_dim = query.shape[1], key.shape[1], *query.shape[2:]
  padded_length, padded_source = _round_up(length, block), _round_up(source, block)
  kernel = _splash_kernel(num_heads, padded_length, padded_source, block, interpret)
  # Real tokens are segment 0 and padding segment 1: a real query sees only real keys (and a
  # padded query only padded keys, so no row of the softmax is empty).
  segments = kernel_lib.SegmentIds(
    q=(jnp.arange(padded_length) >= length).astype(jnp.int32),
    kv=(jnp.arange(padded_source) >= source).astype(jnp.int32),
  )
  heads_first = lambda x, n: jnp.swapaxes(_pad_tokens(x, n), 1, 2)  # (B, H, n, D)
  scaled = query * jnp.asarray(1.0 / math.sqrt(head_dim), query.dtype)
  per_device = lambda q, k, v: jax.vmap(kernel, in_axes=(0, 0, 0, None))(q, k, v, segments)
  attended = _per_device(per_device, query.shape[0], num_heads)(
    heads_first(scaled, padded_length),
    heads_first(key, padded_source),
    heads_first(value, padded_source),
  )
  return jnp.swapaxes(attended, 1, 2)[:, :length].astype(query.dtype)


def _per_device(fn, batch: int, num_heads: int):
  """`fn` on (B, H, n, D) arrays, run per device under `jax.shard_map` when a mesh is set.

  A Pallas kernel is a custom call that XLA's partitioner cannot split, so on a mesh (the context
  mesh that `jax.set_mesh` sets; pix2seq_d.loops.state's jitted steps run under it) each device runs
  the kernel on its own rows and heads: the batch split over every mesh axis but
  HEADS_MESH_AXIS, the heads over that one, each only where the sizes divide.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return fn
  batch_axes = tuple(a for a in mesh.axis_names if a != HEADS_MESH_AXIS and mesh.shape[a] > 1)
  if batch % math.prod(mesh.shape[a] for a in batch_axes):
    batch_axes = ()
  heads_axis = mesh.shape.get(HEADS_MESH_AXIS, 1)
  heads = HEADS_MESH_AXIS if heads_axis > 1 and num_heads % heads_axis == 0 else None
  spec = PartitionSpec(batch_axes or None, heads, None, None)
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)


# ---------------------------------------------------------------------------------- chunked
def _blocks(x: jax.Array, block: int) -> jax.Array:
  """(B, S, H, D) -> (S / block, B, block, H, D): the scan's leading axis."""
  batch, source = x.shape[:2]
  return jnp.swapaxes(x.reshape((batch, source // block, block) + x.shape[2:]), 0, 1)


def _block_scores(query: jax.Array, key_block: jax.Array, valid: jax.Array) -> jax.Array:
  """(B, L, H, D) x (B, k, H, D) -> float32 scores (B, H, L, k), invalid keys at the minimum."""
  scores = jnp.einsum('blhd,bkhd->bhlk', query, key_block, preferred_element_type=jnp.float32)
  return jnp.where(valid[None, None, None, :], scores, jnp.finfo(jnp.float32).min)


def _chunked_forward(query, key, value, source: int, block: int):
  """Online-softmax pass over key blocks -> (out (B, L, H, D), logsumexp (B, H, L) float32)."""
  batch, length, num_heads, head_dim = query.shape
  valid = (jnp.arange(key.shape[1]) < source).reshape(-1, block)

  def visit(carry, inputs):
    running_max, normaliser, accumulator = carry
    key_block, value_block, valid_block = inputs
    scores = _block_scores(query, key_block, valid_block)
    new_max = jnp.maximum(running_max, scores.max(axis=-1))
    probs = jnp.exp(scores - new_max[..., None])
    correction = jnp.exp(running_max - new_max)
    normaliser = normaliser * correction + probs.sum(axis=-1)
    update = jnp.einsum(
      'bhlk,bkhd->blhd', probs.astype(value.dtype), value_block, preferred_element_type=jnp.float32
    )
    accumulator = accumulator * jnp.swapaxes(correction, 1, 2)[..., None] + update
    return (new_max, normaliser, accumulator), None

  init = (
    jnp.full((batch, num_heads, length), -jnp.inf, jnp.float32),
    jnp.zeros((batch, num_heads, length), jnp.float32),
    jnp.zeros((batch, length, num_heads, head_dim), jnp.float32),
  )
  (running_max, normaliser, accumulator), _ = jax.lax.scan(
    visit, init, (_blocks(key, block), _blocks(value, block), valid)
  )
  out = accumulator / jnp.swapaxes(normaliser, 1, 2)[..., None]
  return out.astype(query.dtype), running_max + jnp.log(normaliser)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _chunked_core(query, key, value, source: int, block: int):
  """Attention of pre-scaled `query` over the first `source` keys; key length % block == 0."""
  return _chunked_forward(query, key, value, source, block)[0]


def _chunked_core_fwd(query, key, value, source, block):
  out, logsumexp = _chunked_forward(query, key, value, source, block)
  return out, (query, key, value, out, logsumexp)


def _chunked_core_bwd(source, block, residuals, d_out):
  """Flash-attention backward: per key block, P from the saved log-sum-exp, then dQ, dK, dV."""
  query, key, value, out, logsumexp = residuals
  valid = (jnp.arange(key.shape[1]) < source).reshape(-1, block)
  # delta_l = sum_d dO * O = sum_s P_ls dP_ls, the softmax's Jacobian term.
  delta = jnp.einsum('blhd,blhd->bhl', d_out.astype(jnp.float32), out.astype(jnp.float32))
  d_out_c = d_out.astype(query.dtype)

  def visit(d_query, inputs):
    key_block, value_block, valid_block = inputs
    probs = jnp.exp(_block_scores(query, key_block, valid_block) - logsumexp[..., None])
    d_value = jnp.einsum(
      'bhlk,blhd->bkhd', probs.astype(d_out_c.dtype), d_out_c, preferred_element_type=jnp.float32
    )
    d_probs = jnp.einsum(
      'blhd,bkhd->bhlk', d_out_c, value_block, preferred_element_type=jnp.float32
    )
    d_scores = (probs * (d_probs - delta[..., None])).astype(query.dtype)
    d_query = d_query + jnp.einsum(
      'bhlk,bkhd->blhd', d_scores, key_block, preferred_element_type=jnp.float32
    )
    d_key = jnp.einsum('bhlk,blhd->bkhd', d_scores, query, preferred_element_type=jnp.float32)
    return d_query, (d_key.astype(key.dtype), d_value.astype(value.dtype))

  d_query, (d_key, d_value) = jax.lax.scan(
    visit, jnp.zeros(query.shape, jnp.float32), (_blocks(key, block), _blocks(value, block), valid)
  )
  unblock = lambda x: jnp.swapaxes(x, 0, 1).reshape(key.shape)
  return d_query.astype(query.dtype), unblock(d_key), unblock(d_value)


_chunked_core.defvjp(_chunked_core_fwd, _chunked_core_bwd)


def chunked(query: jax.Array, key: jax.Array, value: jax.Array, *, block: int) -> jax.Array:
  """Memory-efficient attention over key blocks of `block` tokens (S padded to a multiple).

  When all keys fit in one block there is nothing to save, and the reference runs instead.
  """
  source = key.shape[1]
  if source <= block:
    return xla(query, key, value)
  padded_source = _round_up(source, block)
  scaled = query * jnp.asarray(1.0 / math.sqrt(query.shape[-1]), query.dtype)
  return _chunked_core(
    scaled, _pad_tokens(key, padded_source), _pad_tokens(value, padded_source), source, block
  )


# --------------------------------------------------------------------------------- dispatch
def attend(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  *,
  implementation: str,
  block: int,
  cudnn_multiple: int = CUDNN_SEQ_MULTIPLE,
  fallback: str = '',
) -> jax.Array:
  """softmax(Q K^T / sqrt(D)) V by `implementation` (resolved: not 'auto').

  Args:
    query: (B, L, H, D).
    key, value: (B, S, H, D).
    implementation: 'xla', 'cudnn', 'splash' or 'chunked'.
    block: the tile of 'splash' and 'chunked' (tokens).
    cudnn_multiple: 'cudnn' pads L and S to multiples of this.
    fallback: with 'cudnn', the implementation used when cuDNN refuses the call while tracing
      (one warning per reason names it); '' raises instead. 'auto' falls back to 'chunked'.

  Returns:
    (B, L, H, D) in query's dtype.
  """
  if implementation == 'xla':
    return xla(query, key, value)
  if implementation == 'cudnn':
    try:
      return cudnn(query, key, value, multiple=cudnn_multiple)
    except CUDNN_REFUSALS as refusal:
      if not fallback:
        raise
      reason = (
        f'cuDNN attention refused query {tuple(query.shape)} / key {tuple(key.shape)} '
        f'{query.dtype} ({type(refusal).__name__}: {refusal})'
      )
      if reason not in _warned_fallbacks:
        _warned_fallbacks.add(reason)
        logging.warning('%s; using %r attention there instead.', reason, fallback)
      return attend(query, key, value, implementation=fallback, block=block)
  if implementation == 'splash':
    return splash(query, key, value, block=block)
  if implementation == 'chunked':
    return chunked(query, key, value, block=block)
  raise ValueError(
    f'attention implementation {implementation!r} is not resolved; use one of '
    f'{", ".join(IMPLEMENTATIONS[1:])}.'
  )
