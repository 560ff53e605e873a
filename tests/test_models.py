"""Shapes, parameter counts and config validation of the Pix2Seq-D modules."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import coco, shapes
from pix2seq_d.diffusion import bits
from pix2seq_d.loops import state as state_lib
from pix2seq_d.models import fusion, layers, resnet, transformer, transunet

PRECISION = layers.Precision()


def _logical_axes(module):
  """{path: logical_axes} of every nnx.Param in `module`."""
  axes = {}
  for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
    axes[path] = var.get_metadata().get('out_sharding')
  return axes


def test_resnet_c4_shapes_and_resnet50_count():
  model = resnet.ResNetC4((1, 2, 1), 8, 0.9, 1e-5, PRECISION, rngs=nnx.Rngs(0))
  outs = model(jax.random.uniform(jax.random.key(0), (2, 64, 96, 3)))
  assert [o.shape for o in outs] == [(2, 16, 24, 32), (2, 8, 12, 64), (2, 4, 6, 128)]
  full = nnx.eval_shape(
    lambda: resnet.ResNetC4((3, 4, 6), 64, 0.9, 1e-5, PRECISION, rngs=nnx.Rngs(0))
  )
  assert layers.count_params(full) == 8_543_296  # torchvision ResNet-50 conv1..layer3.


def test_transformer_layers_shapes():
  x = jax.random.normal(jax.random.key(1), (2, 7, 32))
  context = jax.random.normal(jax.random.key(2), (2, 5, 24))
  enc = transformer.EncoderLayer(32, 4, 64, 0.0, 0.0, 1e-6, PRECISION, rngs=nnx.Rngs(0))
  dec = transformer.DecoderLayer(32, 4, 64, 24, 0.0, 1e-6, PRECISION, rngs=nnx.Rngs(0))
  assert enc(x).shape == (2, 7, 32)
  assert dec(x, context).shape == (2, 7, 32)


def test_fusion_upsamples_to_mask_resolution():
  module = fusion.PyramidMerge(
    [16, 32, 24], [4, 8, 16], 2, 12, (32, 1e-5), PRECISION, rngs=nnx.Rngs(0)
  )
  feats = [jnp.ones((2, 16, 16, 16)), jnp.ones((2, 8, 8, 32)), jnp.ones((2, 4, 4, 24))]
  assert module(feats).shape == (2, 32, 32, 12)


def test_transunet_shapes_and_zero_init_output():
  net = transunet.TransUNet(
    in_features=20,
    mask_size=(16, 24),
    dim=8,
    dim_mults=(1, 2, 2),
    num_res_blocks=1,
    dropout=0.0,
    time_scaling=1000.0,
    time_mlp_mult=4,
    transformer_layers=1,
    transformer_dim=16,
    transformer_heads=2,
    transformer_mlp_ratio=4,
    transformer_dropout=0.0,
    context_dim=12,
    num_groups_out=2,
    logits_per_group=256,
    gn=(32, 1e-5),
    ln_eps=1e-6,
    pos_emb_max=2 * np.pi,
    zero_init_scale=1e-10,
    precision=PRECISION,
    rngs=nnx.Rngs(0),
  )
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
  model = state_lib.build_model(config, rngs=nnx.Rngs(0))
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
  model = state_lib.build_model(config, rngs=nnx.Rngs(0))
  assert model.extra_channels == 16 + 32  # self-conditioning's x0 + the masks of 2 frames
  encoded = model.encode(jnp.zeros((1, 32, 32, 3)))
  extra = jnp.zeros((1, 16, 16, 48))
  logits = model.denoise(jnp.zeros((1, 16, 16, 16)), jnp.ones(1), encoded, extra)
  assert logits.shape == (1, 16, 16, 2, 256)
  with pytest.raises(ValueError, match='48 extra input channels'):
    model.denoise(jnp.zeros((1, 16, 16, 16)), jnp.ones(1), encoded)


def test_coco_parameter_split_matches_spec():
  """The paper's model: 94.5M total; 8.54M ResNet-C4, 38.36M transformer, 4.00M fusion,
  43.59M TransUNet."""
  model = nnx.eval_shape(lambda: state_lib.build_model(coco.get_config(), rngs=nnx.Rngs(0)))
  expected = {'resnet': 8.54e6, 'encoder': 38.36e6, 'fusion': 4.00e6, 'denoiser': 43.59e6}
  for name, count in expected.items():
    assert abs(layers.count_params(getattr(model, name)) / count - 1) < 0.02, name
  assert abs(layers.count_params(model) / 94.5e6 - 1) < 0.01


def test_every_parameter_has_logical_axes():
  model = nnx.eval_shape(lambda: state_lib.build_model(shapes.get_config('tiny'), rngs=nnx.Rngs(0)))
  for path, axes in _logical_axes(model).items():
    var = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))[path]
    assert axes is not None and len(axes) == len(var.shape), path
  names = {a for axes in _logical_axes(model).values() for a in axes if a}
  assert {'embed', 'mlp', 'heads', 'conv_in', 'conv_out', 'norm'} <= names


def test_bfloat16_compute_keeps_float32_params():
  config = shapes.get_config('tiny')
  config.model.dtype = 'bfloat16'
  model = state_lib.build_model(config, rngs=nnx.Rngs(0))
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
  model = state_lib.build_model(config, rngs=nnx.Rngs(0))
  images = jax.random.uniform(jax.random.key(3), (2, 32, 32, 3))
  x_t = jax.random.normal(jax.random.key(4), (2, 16, 16, 16))

  def loss(model):
    return jnp.mean(model(images, x_t, jnp.array([0.2, 0.8])) ** 2)

  return jax.tree.leaves(nnx.grad(loss)(model))


@pytest.mark.slow
@pytest.mark.parametrize(
  'policy', ['nothing_saveable', 'dots_saveable', 'dots_with_no_batch_dims_saveable']
)
def test_remat_gives_the_same_gradients(policy):
  for x, y in zip(_tiny_model_grads('none'), _tiny_model_grads(policy), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('mask_size', (24, 24), 'mask_size'),
    ('num_classes', 300, 'num_classes=300'),
    ('max_instances', 257, 'max_instances=257'),
    ('encoder.num_heads', 3, 'encoder.num_heads=3'),
    ('denoiser.transformer_heads', 5, 'denoiser.transformer_heads=5'),
    ('denoiser.dim_mults', (1, 2, 2, 2, 2, 2), 'not divisible by 32'),
    ('attention_impl', 'flash', "attention_impl='flash'"),
    ('attention_block', 0, 'attention_block=0'),
    ('remat.encoder', 'everything', "remat.encoder='everything'"),
  ],
)
def test_bad_config_names_the_field(field, value, message):
  config = shapes.get_config('tiny')
  section, _, name = field.rpartition('.')
  target = config.model if not section else config.model[section]
  target[name] = value
  with pytest.raises(ValueError, match=message):
    state_lib.build_model(config, rngs=nnx.Rngs(0))


# ------------------------------------------------------------- details of the reference model


def _reference_sincos(height, width, dim, max_position):
  """The reference's definition, written out: per axis, coordinates scaled to [0, max], codes
  [sin(c * w_k)] + [cos(c * w_k)] with w_k = 10000 ** (-2k / (dim / 2)); rows then columns."""

  def codes(n, d):
    c = np.arange(n) / (n - 1) * max_position
    rates = 1.0 / 10000.0 ** (2 * (np.arange(d) // 2) / d)
    angles = c[:, None] * rates[None, :]
    return np.concatenate([np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])], axis=-1)

  y = np.repeat(codes(height, dim // 2)[:, None], width, axis=1)
  x = np.repeat(codes(width, dim // 2)[None], height, axis=0)
  return np.concatenate([y, x], axis=-1).reshape(height * width, dim)


def test_sincos_positions_span_the_grid_as_the_reference():
  emb = layers.sincos_2d(5, 9, 32, 2 * np.pi)
  np.testing.assert_allclose(emb, _reference_sincos(5, 9, 32, 2 * np.pi), atol=1e-6)
  # A place in the image has one code whatever the grid: the middle row of a 5-row grid and
  # of a 9-row grid (stage 1 and stage 2 resolutions differ by 2x in the paper).
  small, large = layers.sincos_2d(5, 5, 32, 2 * np.pi), layers.sincos_2d(9, 9, 32, 2 * np.pi)
  np.testing.assert_allclose(small[2 * 5 + 2], large[4 * 9 + 4], atol=1e-6)


def test_strided_resnet_conv_is_centred_on_the_shortcut_pixel():
  """A 3x3/2 conv pads (1, 1) as the reference: output o sees input 2o-1..2o+1, centred on the
  pixel the 1x1/2 shortcut takes. (SAME pads (0, 1): o sees 2o..2o+2, half a pixel off.)"""
  conv = resnet.resnet_conv(1, 1, 3, 2, PRECISION, rngs=nnx.Rngs(0))
  conv.kernel[...] = jnp.ones_like(conv.kernel[...])
  impulse = jnp.zeros((1, 8, 8, 1)).at[0, 4, 6, 0].set(1.0)
  out = np.asarray(conv(impulse))[0, ..., 0]
  assert out.shape == (4, 4)
  assert list(zip(*np.nonzero(out), strict=True)) == [(2, 3)]
  stem = resnet.resnet_conv(3, 4, 7, 2, PRECISION, rngs=nnx.Rngs(0))
  assert stem(jnp.zeros((1, 64, 96, 3))).shape == (1, 32, 48, 4)


def test_initialisers_follow_the_reference():
  rng = nnx.Rngs(int(np.random.SeedSequence().entropy % 2**31))
  # ResNet: VarianceScaling(1, fan_in, truncated normal): std sqrt(1 / fan_in).
  conv = resnet.resnet_conv(256, 256, 3, 1, PRECISION, rngs=rng)
  std = float(jnp.std(conv.kernel[...]))
  assert std == pytest.approx(np.sqrt(1 / (9 * 256)), rel=0.03)
  # Attention: Keras glorot over (in, heads, head_dim): limit sqrt(6 / (in * (heads + hd))).
  attn = layers.Attention(256, 8, PRECISION, rngs=rng)
  limit = np.sqrt(6 / (256 * (8 + 32)))
  query = np.asarray(attn.query.kernel[...])
  assert query.shape == (256, 256) and np.abs(query).max() <= limit
  assert query.std() == pytest.approx(limit / np.sqrt(3), rel=0.03)
  out_limit = np.sqrt(6 / (8 * (32 + 256)))  # (heads, head_dim, out)
  assert np.abs(np.asarray(attn.out.kernel[...])).max() <= out_limit
  assert np.asarray(attn.out.kernel[...]).std() == pytest.approx(out_limit / np.sqrt(3), rel=0.03)


def test_encoder_layer_drops_units_only_inside_the_mlp():
  """With the MLP's output weights zero, the only stochastic op left would be a dropout on the
  attention branch: the reference has none, so training and inference outputs agree."""
  layer = transformer.EncoderLayer(16, 2, 32, 0.5, 0.0, 1e-6, PRECISION, rngs=nnx.Rngs(0))
  layer.mlp.fc2.kernel[...] = jnp.zeros_like(layer.mlp.fc2.kernel[...])
  x = jax.random.normal(jax.random.key(1), (4, 10, 16))
  train = layer(x)
  layer.eval()
  np.testing.assert_allclose(np.asarray(train), np.asarray(layer(x)), rtol=1e-6, atol=1e-6)
  layer.train()
  layer.mlp.fc2.kernel[...] = jnp.ones_like(layer.mlp.fc2.kernel[...])
  assert not np.allclose(np.asarray(layer(x)), np.asarray(layer(x)))  # the MLP's dropout acts
