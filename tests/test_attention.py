"""Each attention implementation equals the XLA reference, forward and backward, with padding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import shapes
from pix2seq_d.loops import state as state_lib
from pix2seq_d.models import attention

SEED = int(np.random.SeedSequence().entropy % 2**31)
print(f'test_attention seed: {SEED}')

IMPLEMENTATIONS = {
  # Blocks smaller than the sequences, and lengths no block divides, so padding is exercised.
  'chunked': functools.partial(attention.chunked, block=32),
  # The cuDNN path's padding and key masking, run through XLA's fused-attention entry on CPU.
  'padded_fused': functools.partial(attention.padded_fused, multiple=64, implementation='xla'),
  'splash': functools.partial(attention.splash, block=128, interpret=True),
}


def _inputs(seed, length, source, heads=2, head_dim=16, batch=2, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 4)
  query = jax.random.normal(keys[0], (batch, length, heads, head_dim), dtype)
  key = jax.random.normal(keys[1], (batch, source, heads, head_dim), dtype)
  value = jax.random.normal(keys[2], (batch, source, heads, head_dim), dtype)
  cotangent = jax.random.normal(keys[3], (batch, length, heads, head_dim), dtype)
  return query, key, value, cotangent


def _value_and_grads(fn, query, key, value, cotangent):
  def loss(q, k, v):
    out = fn(q, k, v)
    return jnp.sum(out.astype(jnp.float32) * cotangent.astype(jnp.float32)), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
    query, key, value
  )
  return out, grads


@pytest.mark.parametrize('name', list(IMPLEMENTATIONS))
@pytest.mark.parametrize('length, source', [(97, 97), (65, 40), (33, 130)])
def test_implementation_equals_xla_reference(name, length, source):
  """Self-attention (L = S, like the 4097-token bottleneck) and cross-attention (L != S)."""
  seed = SEED + length + source
  inputs = _inputs(seed, length, source)
  ref_out, ref_grads = _value_and_grads(attention.xla, *inputs)
  out, grads = _value_and_grads(IMPLEMENTATIONS[name], *inputs)
  assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
  np.testing.assert_allclose(out, ref_out, atol=2e-5, rtol=2e-5, err_msg=f'seed {seed}')
  for label, grad, ref in zip('qkv', grads, ref_grads, strict=True):
    np.testing.assert_allclose(grad, ref, atol=5e-5, rtol=5e-5, err_msg=f'd{label}, seed {seed}')


def test_chunked_in_bfloat16_stays_close_to_float32_reference():
  inputs = _inputs(SEED, 200, 200, dtype=jnp.bfloat16)
  ref_out, ref_grads = _value_and_grads(attention.xla, *[x.astype(jnp.float32) for x in inputs])
  out, grads = _value_and_grads(IMPLEMENTATIONS['chunked'], *inputs)
  assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
  # bfloat16 keeps 8 bits of mantissa: compare at that precision, relative to the scale.
  np.testing.assert_allclose(out.astype(jnp.float32), ref_out, atol=3e-2, rtol=3e-2)
  for grad, ref in zip(grads, ref_grads, strict=True):
    scale = float(jnp.abs(ref).max())
    assert float(jnp.abs(grad.astype(jnp.float32) - ref).max()) < 3e-2 * scale


def _temp_bytes(fn, length, batch=1, heads=8, head_dim=64):
  """Compiled temporary memory of the attention's value-and-gradient on abstract inputs."""
  q = jax.ShapeDtypeStruct((batch, length, heads, head_dim), jnp.float32)

  def loss(q, k, v):
    return jnp.sum(fn(q, k, v))

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, q, q).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_memory_grows_linearly_with_tokens():
  """The backward pass keeps no (L, S) matrix: doubling the tokens about doubles the memory."""
  chunked = functools.partial(attention.chunked, block=256)
  small, large = _temp_bytes(chunked, 1024), _temp_bytes(chunked, 2048)
  ref_small, ref_large = _temp_bytes(attention.xla, 1024), _temp_bytes(attention.xla, 2048)
  print(f'temp bytes 1024 / 2048 tokens: chunked {small} / {large}, xla {ref_small} / {ref_large}')
  assert large < 2.5 * small
  assert ref_large > 3.5 * ref_small
  assert large < ref_large / 4


@pytest.mark.parametrize(
  'backend, dtype, expected',
  [
    ('gpu', jnp.bfloat16, 'cudnn'),
    ('gpu', jnp.float16, 'cudnn'),
    ('gpu', jnp.float32, 'chunked'),
    ('tpu', jnp.bfloat16, 'splash'),
    ('tpu', jnp.float32, 'splash'),
    ('cpu', jnp.float32, 'chunked'),
  ],
)
def test_auto_picks_the_implementation_per_backend(backend, dtype, expected):
  assert attention.resolve('auto', dtype, backend) == expected
  assert attention.resolve('xla', dtype, backend) == 'xla'


def test_cudnn_refusal_falls_back_with_one_warning_or_raises(caplog):
  """Where cuDNN cannot take a call while tracing (on a CPU: no cuDNN at all), 'auto''s cuDNN
  runs that attention chunked and says why once; asked for explicitly, it is an error."""
  inputs = _inputs(SEED, 70, 70, dtype=jnp.bfloat16)
  cudnn = functools.partial(attention.attend, implementation='cudnn', block=32)
  reference, _ = _value_and_grads(functools.partial(attention.chunked, block=32), *inputs)
  for _ in range(2):
    out, _ = _value_and_grads(functools.partial(cudnn, fallback='chunked'), *inputs)
    np.testing.assert_array_equal(out, reference)
  warnings = [r for r in caplog.records if 'cuDNN attention refused' in r.getMessage()]
  assert len(warnings) == 1 and "using 'chunked' attention there" in warnings[0].getMessage()
  assert 'query (2, 70, 2, 16)' in warnings[0].getMessage()
  with pytest.raises(RuntimeError):
    _value_and_grads(cudnn, *inputs)
  with pytest.raises(ValueError, match='cudnn_seq_multiple=96'):
    attention.cudnn(*inputs[:3], multiple=96)


def test_unknown_implementation_names_the_field():
  with pytest.raises(ValueError, match="attention_impl='flash'"):
    attention.resolve('flash', jnp.float32)
  query = jnp.zeros((1, 8, 2, 8))
  with pytest.raises(ValueError, match='attention_block=96'):
    attention.splash(query, query, query, block=96)


@pytest.mark.parametrize('impl, block', [('chunked', 2), ('splash', 128)])
def test_model_with_each_implementation_equals_xla(impl, block):
  """The whole tiny model (encoder self-attention, bottleneck self- and cross-attention) gives
  the same logits and gradients; a block of 2 tokens chunks the encoder's 4 tokens, splash pads
  the 4 and 5 tokens to its 128-token tile."""
  images = jax.random.uniform(jax.random.key(SEED), (2, 32, 32, 3))
  x_t = jax.random.normal(jax.random.key(SEED + 1), (2, 16, 16, 16))
  gamma = jnp.array([0.3, 0.9])

  def run(name):
    config = shapes.get_config('tiny')
    config.model.attention_impl = name
    config.model.attention_block = block
    model = state_lib.build_model(config, rngs=nnx.Rngs(0))
    model.eval()

    def loss(model):
      logits = model(images, x_t, gamma)
      return jnp.mean(jnp.sin(logits)), logits

    (_, logits), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    return logits, jax.tree.leaves(nnx.state(grads, nnx.Param))

  ref_logits, ref_grads = run('xla')
  logits, grads = run(impl)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
  for grad, ref in zip(grads, ref_grads, strict=True):
    np.testing.assert_allclose(grad, ref, atol=1e-6, rtol=1e-4)
