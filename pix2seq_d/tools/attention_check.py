"""Fused attention against the XLA reference at the model's own attention shapes.

For each attention of the model (the denoiser bottleneck's self-attention over the mask tokens
and its time token, its cross-attention to the encoder tokens, and the encoder's self-attention)
and each padding multiple, the fused implementation runs in the compute dtype and the XLA
reference in float32 on the same (rounded) inputs; forward outputs and the gradients of q, k and
v under a random cotangent are compared:

  records = check_attention(config, batch=2, multiples=(64, 128))

A record: {'site', 'query_tokens', 'key_tokens', 'heads', 'head_dim', 'multiple',
'implementation', 'dtype', 'forward_max_rel_err', 'grad_max_rel_err': {'q', 'k', 'v'},
'nan', 'error'}. An error is max |x - ref| / max |ref| over the tensor. On a GPU the fused
implementation is cuDNN's; elsewhere it is XLA's fused-attention entry with the same padding and
masking ('padded_xla'), so the check itself runs on a CPU. cuDNN refusing a shape is recorded in
'error', not raised. Imports no TensorFlow.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from pix2seq_d.models import attention
from pix2seq_d.models import model as p2s


def attention_sites(model_config) -> list[dict]:
  """The model's attention shapes: [{'site', 'query_tokens', 'key_tokens', 'heads',
  'head_dim'}] for the bottleneck self- and cross-attention and the encoder's self-attention."""
  m = model_config
  stride = p2s.encoder_stride(m)
  encoder_tokens = math.prod(int(size) // stride for size in m.image_size)
  down = 2 ** (len(m.denoiser.dim_mults) - 1)
  bottleneck_tokens = math.prod(int(size) // down for size in m.mask_size) + 1  # + time token
  decoder_heads = int(m.denoiser.transformer_heads)
  decoder_head_dim = int(m.denoiser.transformer_dim) // decoder_heads
  encoder_heads = int(m.encoder.num_heads)
  return [
    {
      'site': 'bottleneck self-attention',
      'query_tokens': bottleneck_tokens,
      'key_tokens': bottleneck_tokens,
      'heads': decoder_heads,
      'head_dim': decoder_head_dim,
    },
    {
      'site': 'bottleneck cross-attention',
      'query_tokens': bottleneck_tokens,
      'key_tokens': encoder_tokens,
      'heads': decoder_heads,
      'head_dim': decoder_head_dim,
    },
    {
      'site': 'encoder self-attention',
      'query_tokens': encoder_tokens,
      'key_tokens': encoder_tokens,
      'heads': encoder_heads,
      'head_dim': int(m.encoder.dim) // encoder_heads,
    },
  ]


def _max_rel_err(value: jax.Array, reference: jax.Array) -> float:
  value, reference = value.astype(jnp.float32), reference.astype(jnp.float32)
  scale = jnp.maximum(jnp.max(jnp.abs(reference)), jnp.finfo(jnp.float32).tiny)
  return float(jnp.max(jnp.abs(value - reference)) / scale)


def _output_and_grads(fn, inputs, cotangent):
  def loss(q, k, v):
    out = fn(q, k, v)
    return jnp.sum(out.astype(jnp.float32) * cotangent), out

  grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
  (_, out), grads = jax.jit(grad)(*inputs)
  return out, grads


def check_site(site: dict, *, batch: int, multiple: int, dtype, seed: int = 0) -> dict:
  """One record (module docstring) for one attention shape and padding multiple."""
  on_gpu = jax.default_backend() == 'gpu'
  record = {
    **site,
    'multiple': multiple,
    'implementation': 'cudnn' if on_gpu else 'padded_xla',
    'dtype': jnp.dtype(dtype).name,
    'error': None,
  }
  keys = jax.random.split(jax.random.key(seed), 4)
  heads, head_dim = site['heads'], site['head_dim']
  q_shape = (batch, site['query_tokens'], heads, head_dim)
  kv_shape = (batch, site['key_tokens'], heads, head_dim)
  inputs = [
    jax.random.normal(k, s, jnp.float32).astype(dtype)
    for k, s in zip(keys[:3], (q_shape, kv_shape, kv_shape), strict=True)
  ]
  cotangent = jax.random.normal(keys[3], q_shape, jnp.float32)
  fused = functools.partial(
    attention.padded_fused,
    multiple=multiple,
    implementation=record['implementation'].replace('padded_', ''),
  )
  try:
    out, grads = _output_and_grads(fused, inputs, cotangent)
  except attention.CUDNN_REFUSALS as refusal:
    record['error'] = f'{type(refusal).__name__}: {refusal}'
    return record
  reference_inputs = [x.astype(jnp.float32) for x in inputs]
  ref_out, ref_grads = _output_and_grads(attention.xla, reference_inputs, cotangent)
  record['forward_max_rel_err'] = _max_rel_err(out, ref_out)
  record['grad_max_rel_err'] = {
    name: _max_rel_err(grad, ref) for name, grad, ref in zip('qkv', grads, ref_grads, strict=True)
  }
  record['nan'] = bool(
    jnp.isnan(out.astype(jnp.float32)).any()
    or any(jnp.isnan(g.astype(jnp.float32)).any() for g in grads)
  )
  return record


def check_attention(config, *, batch: int = 2, multiples=(64, 128), seed: int = 0) -> list[dict]:
  """`check_site` for every attention of config.model and every multiple, in the compute dtype."""
  dtype = p2s.resolve_dtype(config.model.dtype)
  return [
    check_site(site, batch=batch, multiple=multiple, dtype=dtype, seed=seed)
    for site in attention_sites(config.model)
    for multiple in multiples
  ]
