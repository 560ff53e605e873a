"""Pyramid-merge fusion of the encoder's feature pyramid up to the mask resolution."""

from collections.abc import Sequence

import jax
from flax import nnx

from pix2seq_d.models import layers


class UpsampleBlock(nnx.Module):
  """silu(GN(conv3x3(x_hr + up(silu(GN(conv1x1(x_lr))))))), nearest upsampling.

  Without a high-resolution input (`x_hr=None`) the block only upsamples and refines.
  """

  def __init__(
    self,
    lr_features: int,
    hr_features: int,
    out_features: int,
    factor: int,
    gn: tuple[int, float],
    precision: layers.Precision,
    *,
    rngs: nnx.Rngs,
  ):
    self.factor = factor
    self.lateral = layers.conv(lr_features, hr_features, 1, precision, rngs=rngs)
    self.lateral_norm = layers.GroupNorm(hr_features, *gn, precision)
    self.merge = layers.conv(hr_features, out_features, 3, precision, rngs=rngs)
    self.merge_norm = layers.GroupNorm(out_features, *gn, precision)

  def __call__(self, x_lr: jax.Array, x_hr: jax.Array | None) -> jax.Array:
    """x_lr (B, h, w, Clr), x_hr (B, h * f, w * f, Chr) or None -> (B, h * f, w * f, Cout)."""
    x = layers.upsample_nearest(jax.nn.silu(self.lateral_norm(self.lateral(x_lr))), self.factor)
    if x_hr is not None:
      x = x + x_hr
    return jax.nn.silu(self.merge_norm(self.merge(x)))


class PyramidMerge(nnx.Module):
  """Top-down merge of [C2 (stride 4), C3 (stride 8), ..., top (stride s)] into one map.

  Each lower-resolution map is merged into the next higher one (the block's width is that of the
  higher-resolution map), then a final block without skip upsamples the stride-4 result to the mask
  resolution with `out_features` channels.
  """

  def __init__(
    self,
    in_features: Sequence[int],
    in_strides: Sequence[int],
    mask_stride: int,
    out_features: int,
    gn: tuple[int, float],
    precision: layers.Precision,
    *,
    rngs: nnx.Rngs,
    remat: str = 'none',
  ):
    self.remat = remat
    if in_strides[0] % mask_stride:
      raise ValueError(
        f'fusion: the mask stride {mask_stride} must divide the finest feature stride '
        f'{in_strides[0]}.'
      )
    blocks = []
    for level in range(len(in_features) - 1, 0, -1):
      blocks.append(
        UpsampleBlock(
          in_features[level],
          in_features[level - 1],
          in_features[level - 1],
          in_strides[level] // in_strides[level - 1],
          gn,
          precision,
          rngs=rngs,
        )
      )
    self.blocks = nnx.List(blocks)
    self.final = UpsampleBlock(
      in_features[0],
      out_features,
      out_features,
      in_strides[0] // mask_stride,
      gn,
      precision,
      rngs=rngs,
    )

  def __call__(self, features: Sequence[jax.Array]) -> jax.Array:
    """[(B, H/4, W/4, C2), ..., (B, H/s, W/s, Ctop)] -> (B, Hm, Wm, out_features)."""
    run_block = layers.maybe_remat(lambda block, lr, hr: block(lr, hr), self.remat)
    x = features[-1]
    for block, x_hr in zip(self.blocks, reversed(features[:-1]), strict=True):
      x = run_block(block, x, x_hr)
    return run_block(self.final, x, None)
