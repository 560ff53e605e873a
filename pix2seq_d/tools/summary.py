"""`--mode=summary`: parameter table and forward FLOPs of the configured model.

Nothing is materialised: the model is built under `nnx.eval_shape` and the FLOPs come from XLA's
cost analysis of the lowered (not compiled) computations on abstract inputs.
"""

import copy

import jax
import jax.numpy as jnp
from flax import nnx

from pix2seq_d.diffusion import bits
from pix2seq_d.loops import state as state_lib
from pix2seq_d.models import layers
from pix2seq_d.models import model as p2s

TOP_LEVEL = {
  'resnet': 'ResNet C4 backbone',
  'encoder': 'encoder transformer',
  'fusion': 'pyramid-merge fusion',
  'denoiser': 'TransUNet denoiser',
}


def parameter_rows(model: p2s.Pix2SeqD, depth: int = 2) -> list[tuple[str, int]]:
  """(path, count) for each module up to `depth` levels below the top, in definition order."""
  counts: dict[str, int] = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    size = 1
    for dim in var.shape:
      size *= dim
    for level in range(1, min(depth, len(path) - 1) + 1):
      key = '/'.join(str(p) for p in path[:level])
      counts[key] = counts.get(key, 0) + size
  order = {name: index for index, name in enumerate(TOP_LEVEL)}
  return sorted(
    counts.items(),
    key=lambda item: (order.get(item[0].split('/')[0], len(order)), item[0].count('/') > 0),
  )


def _flops(fn, *args) -> float:
  """XLA's FLOP estimate of `fn(*args)` on abstract inputs."""
  analysis = jax.jit(fn).lower(*args).cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get('flops', 0.0)) if analysis else 0.0


def flops_config(config):
  """A copy of `config` whose FLOPs XLA can count: XLA attention, no rematerialisation.

  Cost analysis counts no FLOPs in custom calls (cuDNN, Pallas) and a loop body once, whatever
  its trip count (the chunked attention's scan); XLA attention does the same math in plain ops.
  Recomputation is not model work, so remat is off.
  """
  counted = copy.deepcopy(config)
  with counted.unlocked():
    counted.model.attention_impl = 'xla'
    for part in p2s.REMAT_PARTS:
      counted.model.remat[part] = 'none'
  return counted


def flops_model(config, task=None) -> p2s.Pix2SeqD:
  """The abstract model of `flops_config(config)`, in evaluation mode, with the conditioning
  inputs of `task` (default: the configured task's)."""
  counted = flops_config(config)
  model = nnx.eval_shape(lambda: state_lib.build_model(counted, rngs=nnx.Rngs(0), task=task))
  model.eval()
  return model


def forward_flops(config, task=None) -> dict[str, float]:
  """Forward FLOPs per image: one encoder pass, one denoiser pass, and a full sampling run."""
  model = flops_model(config, task)
  graphdef, state = nnx.split(model)
  h, w = layers.static_tuple(config.model.image_size)
  hm, wm = layers.static_tuple(config.model.mask_size)
  image = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
  x_t = jax.ShapeDtypeStruct((1, hm, wm, bits.MASK_BITS), jnp.float32)
  gamma = jax.ShapeDtypeStruct((1,), jnp.float32)
  extra = (
    jax.ShapeDtypeStruct((1, hm, wm, model.extra_channels), jnp.float32)
    if model.extra_channels
    else None
  )

  def encode(state, image):
    return nnx.merge(graphdef, state).encode(image)

  encoded_shape = jax.eval_shape(encode, state, image)

  def denoise(state, image, x_t, gamma, extra):
    encoded = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), encoded_shape)
    return nnx.merge(graphdef, state).denoise(x_t, gamma, encoded, extra)

  encoder = _flops(encode, state, image)
  denoiser = _flops(denoise, state, image, x_t, gamma, extra)
  steps = config.diffusion.steps
  return {'encoder': encoder, 'denoiser_step': denoiser, 'sampling': encoder + steps * denoiser}


def part_flops(config, forward: dict[str, float] | None = None, task=None) -> dict[str, float]:
  """Forward FLOPs per image of each part, from XLA's cost analysis of the part alone.

  Keys: 'resnet', 'encoder_transformer', 'fusion', 'transunet_convs' (the denoiser step without
  its bottleneck), 'transunet_transformer' (the bottleneck: projections, attention, MLPs), and
  'attention_core' (the Q K^T and P V matmuls inside both transformers, counted as 2 FLOPs per
  multiply-add: 4 L S D per attention layer; the other parts include these).
  `forward` is `forward_flops(config)` when the caller already has it; `task` as in
  `flops_model`.
  """
  model = flops_model(config, task)
  graphdef, state = nnx.split(model)
  h, w = layers.static_tuple(config.model.image_size)
  hm, wm = layers.static_tuple(config.model.mask_size)
  image = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
  stages = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).resnet(x), state, image)
  c4 = stages[-1]
  tokens = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).encoder(x), state, c4)
  grid = model.encoder.grid
  top = jax.ShapeDtypeStruct((1,) + tuple(grid) + (tokens.shape[-1],), tokens.dtype)
  resnet_flops = _flops(lambda s, x: nnx.merge(graphdef, s).resnet(x), state, image)
  encoder_flops = _flops(lambda s, x: nnx.merge(graphdef, s).encoder(x), state, c4)
  fusion_flops = _flops(
    lambda s, f: nnx.merge(graphdef, s).fusion(f), state, list(stages[:-1]) + [top]
  )
  denoiser_flops = (forward or forward_flops(config, task))['denoiser_step']
  bottleneck = model.denoiser.bottleneck
  d = config.model.denoiser
  bottleneck_flops, core = 0.0, 0.0
  # Encoder self-attention: L = S = tokens, width D = encoder.dim.
  core += config.model.encoder.num_layers * 4 * tokens.shape[1] ** 2 * tokens.shape[-1]
  if bottleneck is not None:
    scale = 2 ** (len(d.dim_mults) - 1)
    in_features = bottleneck.norm_in.scale.shape[0]
    x = jax.ShapeDtypeStruct((1, hm // scale, wm // scale, in_features), jnp.float32)
    emb = jax.ShapeDtypeStruct((1, model.denoiser.time_emb.fc2.kernel.shape[1]), jnp.float32)
    bottleneck_flops = _flops(
      lambda s, x, e, c: nnx.merge(graphdef, s).denoiser.bottleneck(x, e, c), state, x, emb, tokens
    )
    length = (hm // scale) * (wm // scale) + 1  # mask tokens + the time token
    # Per layer: self-attention over L tokens and cross-attention of L queries to the tokens.
    core += d.transformer_layers * 4 * length * (length + tokens.shape[1]) * d.transformer_dim
  return {
    'resnet': resnet_flops,
    'encoder_transformer': encoder_flops,
    'fusion': fusion_flops,
    'transunet_convs': denoiser_flops - bottleneck_flops,
    'transunet_transformer': bottleneck_flops,
    'attention_core': float(core),
  }


def model_summary(config, task=None) -> str:
  """The text `--mode=summary` prints; its last line is `total params: N`. `task`: the run's
  (its conditioning inputs are parameters of the denoiser); default the configured task's."""
  model = nnx.eval_shape(lambda: state_lib.build_model(config, rngs=nnx.Rngs(0), task=task))
  lines = [f'{"module":<48} {"params":>14}', '-' * 63]
  for path, count in parameter_rows(model):
    top = path.split('/')[0]
    label = f'{path} ({TOP_LEVEL[top]})' if path in TOP_LEVEL else f'  {path}'
    lines.append(f'{label:<48} {count:>14,}')
  flops = forward_flops(config, task)
  parts = part_flops(config, flops, task)
  steps = config.diffusion.steps
  lines += [
    '-' * 63,
    f'image {tuple(config.model.image_size)}, mask {tuple(config.model.mask_size)}, '
    f'compute dtype {jnp.dtype(model.dtype).name}',
    f'forward GFLOPs per image: encoder {flops["encoder"] / 1e9:,.1f}, denoiser step '
    f'{flops["denoiser_step"] / 1e9:,.1f}, sampling with {steps} steps '
    f'{flops["sampling"] / 1e9:,.1f}',
    'forward GFLOPs per image by part: '
    + ', '.join(f'{name} {value / 1e9:,.1f}' for name, value in parts.items()),
    f'total params: {layers.count_params(model)}',
  ]
  return '\n'.join(lines)
