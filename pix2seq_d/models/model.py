"""The Pix2Seq-D network: image encoder, pyramid fusion and TransUNet denoiser.

`encode` runs once per image; `denoise` runs once per diffusion step on the encoder's output, so
the sampler never recomputes the encoder.

  model = build_model(config, rngs=nnx.Rngs(params=0, dropout=1))
  encoded = model.encode(images)                            # images (B, H, W, 3) in [0, 1]
  logits = model.denoise(x_t, gamma, encoded)               # (B, Hm, Wm, 2, 256)
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pix2seq_d.config import checks
from pix2seq_d.diffusion import bits
from pix2seq_d.models import attention, fusion, layers, resnet, transformer, transunet

# The parts whose blocks can be rematerialised, each under its own config.model.remat.<part>.
REMAT_PARTS = ('resnet', 'encoder', 'fusion', 'denoiser')


@dataclasses.dataclass
class Encoded:
  """The encoder's output, computed once per image.

  Attributes:
    tokens: (B, (H/16) * (W/16), D) transformer tokens the denoiser cross-attends to.
    features: (B, Hm, Wm, F) fused pyramid features concatenated to the denoiser input.
  """

  tokens: jax.Array
  features: jax.Array


jax.tree_util.register_dataclass(Encoded, data_fields=['tokens', 'features'], meta_fields=[])


# config.model.dtype (compute; 'auto' = by backend) and config.model.param_dtype (storage).
DTYPES = ('auto', 'float32', 'bfloat16', 'float16')
PARAM_DTYPES = ('float32', 'bfloat16')


def resolve_dtype(name: str) -> Any:
  """'auto' -> bfloat16 on accelerators, float32 on CPU; otherwise the named dtype."""
  if name == 'auto':
    return jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16
  return jnp.dtype(name)


def resolve_attention_impl(name: str, dtype: Any) -> str:
  """'auto' -> padded cuDNN flash attention on GPU in half precision, Pallas splash attention on
  TPU, memory-efficient chunked attention elsewhere (see `models.attention`)."""
  return attention.resolve(name, dtype)


def encoder_stride(model_config) -> int:
  """Stride of the last ResNet stage: 4 (stem) * 2 per stage after the first."""
  return 4 * 2 ** (len(model_config.resnet.stage_sizes) - 1)


def validate_model_config(model_config, num_classes_from_data: bool = False) -> None:
  """Raises ValueError naming the config field when the sizes cannot build a model.

  num_classes_from_data: accept num_classes = 0 (set from the dataset before the model is built).
  """
  m = model_config
  image_h, image_w = layers.static_tuple(m.image_size)
  mask_h, mask_w = layers.static_tuple(m.mask_size)
  if image_h % mask_h or image_w % mask_w:
    raise ValueError(
      f'config.model.mask_size={tuple(m.mask_size)} must divide config.model.image_size='
      f'{tuple(m.image_size)} in both dimensions.'
    )
  capacity = 2**bits.BITS_PER_CHANNEL
  for field in ('num_classes', 'max_instances'):
    value = m[field]
    if field == 'num_classes' and num_classes_from_data and value == 0:
      continue
    if not 1 < value <= capacity:
      raise ValueError(
        f'config.model.{field}={value} does not fit the {bits.BITS_PER_CHANNEL}-bit channel: '
        f'it must be in 2..{capacity}.'
      )
  stride = encoder_stride(m)
  if image_h % stride or image_w % stride:
    raise ValueError(
      f'config.model.image_size={tuple(m.image_size)} must be divisible by the encoder stride '
      f'{stride} (config.model.resnet.stage_sizes={tuple(m.resnet.stage_sizes)}).'
    )
  heads = [
    ('encoder.dim', m.encoder.dim, 'encoder.num_heads', m.encoder.num_heads),
    (
      'denoiser.transformer_dim',
      m.denoiser.transformer_dim,
      'denoiser.transformer_heads',
      m.denoiser.transformer_heads,
    ),
  ]
  for width_name, width, heads_name, num_heads in heads:
    if num_heads < 1 or width % num_heads:
      raise ValueError(
        f'config.model.{heads_name}={num_heads} does not divide config.model.{width_name}={width}.'
      )
  checks.check_choice('model.attention_impl', m.attention_impl, attention.IMPLEMENTATIONS)
  checks.check_choice('model.dtype', m.dtype, DTYPES)
  checks.check_choice('model.param_dtype', m.param_dtype, PARAM_DTYPES)
  if m.attention_block < 1:
    raise ValueError(f'config.model.attention_block={m.attention_block} must be positive.')
  if m.cudnn_seq_multiple < 1 or m.cudnn_seq_multiple % attention.CUDNN_SEQ_MULTIPLE:
    raise ValueError(
      f'config.model.cudnn_seq_multiple={m.cudnn_seq_multiple}: cuDNN trains on sequence '
      f'lengths that are multiples of {attention.CUDNN_SEQ_MULTIPLE}; use one of them.'
    )
  remat_parts = set(m.remat.keys()) if hasattr(m.remat, 'keys') else None
  if remat_parts != set(REMAT_PARTS):
    raise ValueError(
      f'config.model.remat must have one policy per part, {", ".join(REMAT_PARTS)} (each one of '
      f'{", ".join(layers.REMAT_POLICIES)}); got {m.remat!r}.'
    )
  for part in REMAT_PARTS:
    checks.check_choice(f'model.remat.{part}', m.remat[part], layers.REMAT_POLICIES)
  down = 2 ** (len(m.denoiser.dim_mults) - 1)
  if mask_h % down or mask_w % down:
    raise ValueError(
      f'config.model.mask_size={tuple(m.mask_size)} is not divisible by {down}, the U-Net '
      f'downsampling of config.model.denoiser.dim_mults={tuple(m.denoiser.dim_mults)}.'
    )


class ImageEncoder(nnx.Module):
  """C4 features -> dropout -> dense -> LN -> + 2-D sin-cos -> transformer encoder -> LN."""

  def __init__(
    self,
    in_features: int,
    grid: tuple[int, int],
    encoder_config,
    ln_eps: float,
    pos_emb_max: float,
    precision: layers.Precision,
    *,
    rngs: nnx.Rngs,
    remat: str = 'none',
  ):
    e = encoder_config
    self.grid = grid
    self.remat = remat
    self.dropout = nnx.Dropout(e.dropout, rngs=rngs)
    self.proj = layers.dense(in_features, e.dim, ('conv_in', 'embed'), precision, rngs=rngs)
    self.proj_norm = layers.LayerNorm(e.dim, ln_eps, precision)
    self.pos_emb = nnx.Variable(jnp.asarray(layers.sincos_2d(*grid, e.dim, pos_emb_max)))
    self.layers = nnx.List(
      [
        transformer.EncoderLayer(
          e.dim, e.num_heads, e.mlp_dim, e.dropout, e.drop_path, ln_eps, precision, rngs=rngs
        )
        for _ in range(e.num_layers)
      ]
    )
    self.norm = layers.LayerNorm(e.dim, ln_eps, precision)

  def __call__(self, c4: jax.Array) -> jax.Array:
    """(B, h, w, C) -> tokens (B, h * w, D)."""
    batch, height, width, channels = c4.shape
    x = self.proj_norm(self.proj(self.dropout(c4.reshape(batch, height * width, channels))))
    x = x + self.pos_emb[...].astype(x.dtype)
    return self.norm(transformer.run_layers(self.layers, x, remat=self.remat))


class Pix2SeqD(nnx.Module):
  """Pix2Seq-D: `encode(images)` once, then `denoise(x_t, gamma, encoded)` per step."""

  def __init__(
    self,
    model_config,
    *,
    extra_channels: int = 0,
    semantic_head: bool = False,
    rngs: nnx.Rngs,
  ):
    validate_model_config(model_config)
    m = model_config
    self.dtype = resolve_dtype(m.dtype)
    attention_impl = resolve_attention_impl(m.attention_impl, self.dtype)
    precision = layers.Precision(
      dtype=self.dtype,
      param_dtype=jnp.dtype(m.param_dtype),
      attention_impl=attention_impl,
      attention_block=int(m.attention_block),
      cudnn_seq_multiple=int(m.cudnn_seq_multiple),
      # 'auto' must not strand a run on a shape cuDNN refuses: that call runs chunked instead.
      attention_fallback='chunked'
      if (m.attention_impl, attention_impl) == ('auto', 'cudnn')
      else '',
    )
    gn = (m.gn_max_groups, m.gn_eps)
    image_size = layers.static_tuple(m.image_size)
    mask_size = layers.static_tuple(m.mask_size)
    self.mask_size = mask_size
    self.extra_channels = extra_channels
    stride = encoder_stride(m)

    self.resnet = resnet.ResNetC4(
      layers.static_tuple(m.resnet.stage_sizes),
      m.resnet.width,
      m.resnet.bn_momentum,
      m.resnet.bn_eps,
      precision,
      rngs=rngs,
      remat=m.remat.resnet,
    )
    channels = self.resnet.out_channels
    grid = (image_size[0] // stride, image_size[1] // stride)
    self.encoder = ImageEncoder(
      channels[-1],
      grid,
      m.encoder,
      m.ln_eps,
      m.pos_emb_max,
      precision,
      rngs=rngs,
      remat=m.remat.encoder,
    )
    # The pyramid: every stage but the last, then the transformer output in its place.
    pyramid_features = list(channels[:-1]) + [m.encoder.dim]
    pyramid_strides = [4 * 2**i for i in range(len(channels))]
    self.fusion = fusion.PyramidMerge(
      pyramid_features,
      pyramid_strides,
      image_size[0] // mask_size[0],
      m.fusion.dim,
      gn,
      precision,
      rngs=rngs,
      remat=m.remat.fusion,
    )
    d = m.denoiser
    self.denoiser = transunet.TransUNet(
      in_features=bits.MASK_BITS + m.fusion.dim + extra_channels,
      mask_size=mask_size,
      dim=d.dim,
      dim_mults=layers.static_tuple(d.dim_mults),
      num_res_blocks=d.num_res_blocks,
      dropout=d.dropout,
      time_scaling=d.time_scaling,
      time_mlp_mult=d.time_mlp_mult,
      transformer_layers=d.transformer_layers,
      transformer_dim=d.transformer_dim,
      transformer_heads=d.transformer_heads,
      transformer_mlp_ratio=d.transformer_mlp_ratio,
      transformer_dropout=d.transformer_dropout,
      context_dim=m.encoder.dim,
      num_groups_out=bits.NUM_CHANNELS,
      logits_per_group=2**bits.BITS_PER_CHANNEL,
      gn=gn,
      ln_eps=m.ln_eps,
      pos_emb_max=m.pos_emb_max,
      zero_init_scale=m.zero_init_scale,
      precision=precision,
      rngs=rngs,
      remat=m.remat.denoiser,
    )

    # A linear per-pixel class head on the fused features, for the auxiliary training loss
    # (config.diffusion.semantic_aux_weight > 0); sampling never calls it.
    self.semantic_head = (
      layers.dense(m.fusion.dim, m.num_classes, ('embed', None), precision, rngs=rngs)
      if semantic_head
      else None
    )

  def encode(self, images: jax.Array) -> Encoded:
    """images (B, H, W, 3) in [0, 1] -> Encoded(tokens (B, S, D), features (B, Hm, Wm, F))."""
    stages = self.resnet(images.astype(self.dtype))
    tokens = self.encoder(stages[-1])
    batch, (height, width) = tokens.shape[0], self.encoder.grid
    top = tokens.reshape(batch, height, width, tokens.shape[-1])
    return Encoded(tokens=tokens, features=self.fusion(list(stages[:-1]) + [top]))

  def denoise(
    self, x_t: jax.Array, gamma: jax.Array, encoded: Encoded, extra: jax.Array | None = None
  ) -> jax.Array:
    """x_t (B, Hm, Wm, 16), gamma (B,), extra (B, Hm, Wm, E) -> logits (B, Hm, Wm, 2, 256) in the
    compute dtype."""
    inputs = [x_t.astype(self.dtype), encoded.features.astype(self.dtype)]
    if self.extra_channels:
      if extra is None or extra.shape[-1] != self.extra_channels:
        raise ValueError(
          f'denoise: the model was built with {self.extra_channels} extra input channels; got '
          f'{None if extra is None else extra.shape}.'
        )
      inputs.append(extra.astype(self.dtype))
    return self.denoiser(jnp.concatenate(inputs, axis=-1), gamma, encoded.tokens)

  def semantic_logits(self, encoded: Encoded) -> jax.Array:
    """Encoded -> (B, Hm, Wm, num_classes) class logits of the auxiliary head."""
    if self.semantic_head is None:
      raise ValueError(
        'semantic_logits: the model has no class head; it is built when '
        'config.diffusion.semantic_aux_weight > 0.'
      )
    return self.semantic_head(encoded.features)

  def __call__(self, images, x_t, gamma, extra=None):
    """encode + denoise in one call (for summaries and FLOP counts)."""
    return self.denoise(x_t, gamma, self.encode(images), extra)


def build_model(config, *, rngs: nnx.Rngs, cond_channels: int = 0) -> Pix2SeqD:
  """The model that `config` (the whole experiment config) describes.

  Args:
    config: the experiment config (model and diffusion sections are read).
    rngs: the parameter (and dropout) random streams.
    cond_channels: denoiser input channels the task conditions on beyond the noisy mask and the
      image features (the task's `cond_channels()`: the analog bits of earlier frames' masks for
      video, 0 for images). Self-conditioning (config.diffusion.self_cond) adds its own 16.
  """
  self_cond = bits.MASK_BITS if config.diffusion.self_cond else 0
  return Pix2SeqD(
    config.model,
    extra_channels=self_cond + cond_channels,
    semantic_head=config.diffusion.semantic_aux_weight > 0,
    rngs=rngs,
  )
