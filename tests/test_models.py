"""Shapes, parameter counts and config validation of the Pix2Seq-D modules."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import coco, shapes
from pix2seq_d.diffusion import bits
from pix2seq_d.models import fusion, layers, resnet, transformer, transunet
from pix2seq_d.models import pix2seq_d as p2s

PRECISION = layers.Precision()


def _logical_axes(module):
  """{path: logical_axes} of every nnx.Param in `module`."""
  axes = {}
  for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
    axes[path] = var.get_metadata().get('logical_axes')
  return axes


def test_resnet_c4_shapes_and_resnet50_count():
  model = resnet.ResNetC4((1, 2, 1), 8, 0.9, 1e-5, PRECISION, rngs=nnx.Rngs(0))
  outs = model(jax.random.uniform(jax.random.key(0), (2, 64, 96, 3)))
  assert [o.shape for o in outs] == [(2, 16, 24, 32), (2, 8, 12, 64), (2, 4, 6, 128)]
  full = nnx.eval_shape(
    lambda: resnet.ResNetC4((3, 4, 6), 64, 0.9, 1e-5, PRECISION, rngs=nnx.Rngs(0)))
  assert layers.count_params(full) == 8_543_296  # torchvision ResNet-50 conv1..layer3.


def test_transformer_layers_shapes():
  x = jax.random.normal(jax.random.key(1), (2, 7, 32))
  context = jax.random.normal(jax.random.key(2), (2, 5, 24))
  enc = transformer.EncoderLayer(32, 4, 64, 0.0, 0.0, 1e-6, PRECISION, rngs=nnx.Rngs(0))
  dec = transformer.DecoderLayer(32, 4, 64, 24, 0.0, 1e-6, PRECISION, rngs=nnx.Rngs(0))
  assert enc(x).shape == (2, 7, 32)
  assert dec(x, context).shape == (2, 7, 32)


def test_fusion_upsamples_to_mask_resolution():
  module = fusion.PyramidMerge([16, 32, 24], [4, 8, 16], 2, 12, (32, 1e-5), PRECISION,
                               rngs=nnx.Rngs(0))
  feats = [jnp.ones((2, 16, 16, 16)), jnp.ones((2, 8, 8, 32)), jnp.ones((2, 4, 4, 24))]
  assert module(feats).shape == (2, 32, 32, 12)


def test_transunet_shapes_and_zero_init_output():
  net = transunet.TransUNet(
    in_features=20, mask_size=(16, 24), dim=8, dim_mults=(1, 2, 2), num_res_blocks=1,
    dropout=0.0, time_scaling=1000.0, time_mlp_mult=4, transformer_layers=1, transformer_dim=16,
    transformer_heads=2, transformer_mlp_ratio=4, transformer_dropout=0.0, context_dim=12,
    num_groups_out=2, logits_per_group=256, gn=(32, 1e-5), ln_eps=1e-6, zero_init_scale=1e-10,
    precision=PRECISION, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (3, 16, 24, 20))
  logits = net(x, jnp.array([0.1, 0.5, 0.9]), jnp.ones((3, 6, 12)))
  assert logits.shape == (3, 16, 24, 2, 256) and logits.dtype == jnp.float32
  # The output conv starts near zero, so the initial prediction is near uniform.
  assert float(jnp.abs(logits).max()) < 1e-3


# (1, 1, 2, 2): the bottleneck meets the encoder's 2x2 token grid, as in the paper; (1,): no
# downsampling, the transformer runs over all 16x16 mask positions (configs/shapes.py).
@pytest.mark.parametrize('dim_mults', [(1, 1, 2, 2), (1,)])
def test_top_level_encode_denoise_shapes(dim_mults):
  config = shapes.get_config('tiny')
  config.model.denoiser.dim_mults = dim_mults
  model = p2s.build_model(config, rngs=nnx.Rngs(0))
  images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  encoded = model.encode(images)
  assert encoded.tokens.shape == (2, 4, config.model.encoder.dim)
  assert encoded.features.shape == (2, 16, 16, config.model.fusion.dim)
  logits = model.denoise(jnp.zeros((2, 16, 16, bits.MASK_BITS)), jnp.array([0.3, 0.7]), encoded)
  assert logits.shape == (2, 16, 16, 2, 256)


def test_extra_channels_for_video_and_self_conditioning():
  config = shapes.get_config('tiny')
  config.task = 'video_panoptic'
  config.diffusion.self_cond = True
  assert p2s.extra_channels(config) == 16 + 32
  model = p2s.build_model(config, rngs=nnx.Rngs(0))
  encoded = model.encode(jnp.zeros((1, 32, 32, 3)))
  extra = jnp.zeros((1, 16, 16, 48))
  logits = model.denoise(jnp.zeros((1, 16, 16, 16)), jnp.ones(1), encoded, extra)
  assert logits.shape == (1, 16, 16, 2, 256)
  with pytest.raises(ValueError, match='48 extra input channels'):
    model.denoise(jnp.zeros((1, 16, 16, 16)), jnp.ones(1), encoded)


def test_coco_parameter_split_matches_spec():
  """The paper's model: 94.5M total; 8.54M ResNet-C4, 38.36M transformer, 4.00M fusion,
  43.59M TransUNet."""
  model = nnx.eval_shape(lambda: p2s.build_model(coco.get_config(), rngs=nnx.Rngs(0)))
  expected = {'resnet': 8.54e6, 'encoder': 38.36e6, 'fusion': 4.00e6, 'denoiser': 43.59e6}
  for name, count in expected.items():
    assert abs(layers.count_params(getattr(model, name)) / count - 1) < 0.02, name
  assert abs(layers.count_params(model) / 94.5e6 - 1) < 0.01


def test_every_parameter_has_logical_axes():
  model = nnx.eval_shape(lambda: p2s.build_model(shapes.get_config('tiny'), rngs=nnx.Rngs(0)))
  for path, axes in _logical_axes(model).items():
    var = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))[path]
    assert axes is not None and len(axes) == len(var.shape), path
  names = {a for axes in _logical_axes(model).values() for a in axes if a}
  assert {'embed', 'mlp', 'heads', 'conv_in', 'conv_out', 'norm'} <= names


def test_bfloat16_compute_keeps_float32_params():
  config = shapes.get_config('tiny')
  config.model.dtype = 'bfloat16'
  model = p2s.build_model(config, rngs=nnx.Rngs(0))
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert all(p.dtype == jnp.float32 for p in params)
  encoded = model.encode(jnp.ones((1, 32, 32, 3)))
  assert encoded.tokens.dtype == jnp.bfloat16
  # Logits come out of a bfloat16 convolution and stay bfloat16 (the loss upcasts them).
  assert model.denoise(jnp.zeros((1, 16, 16, 16)), jnp.ones(1), encoded).dtype == jnp.bfloat16


@functools.cache
def _tiny_model_grads(policy):
  """Parameter gradients of the tiny model with every part under `policy`."""
  config = shapes.get_config('tiny')
  config.model.remat.update(resnet=policy, encoder=policy, fusion=policy, denoiser=policy)
  model = p2s.build_model(config, rngs=nnx.Rngs(0))
  images = jax.random.uniform(jax.random.key(3), (2, 32, 32, 3))
  x_t = jax.random.normal(jax.random.key(4), (2, 16, 16, 16))

  def loss(model):
    return jnp.mean(model(images, x_t, jnp.array([0.2, 0.8])) ** 2)

  return jax.tree.leaves(nnx.grad(loss)(model))


@pytest.mark.parametrize('policy', ['nothing_saveable', 'dots_saveable',
                                    'dots_with_no_batch_dims_saveable'])
def test_remat_gives_the_same_gradients(policy):
  for x, y in zip(_tiny_model_grads('none'), _tiny_model_grads(policy), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('field, value, message', [
  ('mask_size', (24, 24), 'mask_size'),
  ('num_classes', 300, 'num_classes=300'),
  ('max_instances', 257, 'max_instances=257'),
  ('encoder.num_heads', 3, 'encoder.num_heads=3'),
  ('denoiser.transformer_heads', 5, 'denoiser.transformer_heads=5'),
  ('denoiser.dim_mults', (1, 2, 2, 2, 2, 2), 'not divisible by 32'),
  ('attention_impl', 'flash', "attention_impl='flash'"),
  ('attention_block', 0, 'attention_block=0'),
  ('remat.encoder', 'everything', "remat.encoder='everything'"),
])
def test_bad_config_names_the_field(field, value, message):
  config = shapes.get_config('tiny')
  section, _, name = field.rpartition('.')
  target = config.model if not section else config.model[section]
  target[name] = value
  with pytest.raises(ValueError, match=message):
    p2s.build_model(config, rngs=nnx.Rngs(0))
