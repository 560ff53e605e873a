"""TransUNet denoiser: a conv U-Net whose bottleneck is a transformer that cross-attends to the
image encoder's tokens, conditioned on the noise level gamma.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pix2seq_d.models import layers, transformer


class TimeEmbedding(nnx.Module):
  """gamma -> sin/cos(gamma * time_scaling) -> dense -> silu -> dense -> silu."""

  def __init__(
    self,
    dim: int,
    out_dim: int,
    time_scaling: float,
    precision: layers.Precision,
    *,
    rngs: nnx.Rngs,
  ):
    self.dim = dim
    self.time_scaling = time_scaling
    self.fc1 = layers.dense(dim, out_dim, ('embed', 'mlp'), precision, rngs=rngs)
    self.fc2 = layers.dense(out_dim, out_dim, ('mlp', 'embed'), precision, rngs=rngs)

  def __call__(self, gamma: jax.Array) -> jax.Array:
    """(B,) -> (B, out_dim)."""
    emb = layers.scalar_embedding(gamma * self.time_scaling, self.dim)
    return jax.nn.silu(self.fc2(jax.nn.silu(self.fc1(emb))))


class ResBlock(nnx.Module):
  """h = conv(silu(GN(x))); h = silu(GN(h) * (1 + s) + b); dropout; conv (near zero);
  (h + skip(x)) / sqrt(2), where [s, b] = dense(time embedding)."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    emb_dim: int,
    dropout: float,
    gn: tuple[int, float],
    zero_init_scale: float,
    precision: layers.Precision,
    *,
    rngs: nnx.Rngs,
  ):
    self.norm1 = layers.GroupNorm(in_features, *gn, precision)
    self.conv1 = layers.conv(in_features, out_features, 3, precision, rngs=rngs)
    self.emb_proj = layers.dense(
      emb_dim, 2 * out_features, ('embed', 'conv_out'), precision, rngs=rngs
    )
    self.norm2 = layers.GroupNorm(out_features, *gn, precision)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.conv2 = layers.conv(
      out_features, out_features, 3, precision, rngs=rngs, init_scale=zero_init_scale
    )
    self.skip = (
      None
      if in_features == out_features
      else layers.conv(in_features, out_features, 1, precision, rngs=rngs)
    )

  def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
    """x (B, H, W, Cin), emb (B, E) -> (B, H, W, Cout)."""
    skip = x if self.skip is None else self.skip(x)
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    scale, shift = jnp.split(self.emb_proj(emb)[:, None, None, :], 2, axis=-1)
    h = jax.nn.silu(self.norm2(h) * (1.0 + scale) + shift)
    h = self.conv2(self.dropout(h))
    return (h + skip) / np.sqrt(2.0).astype(h.dtype)


class BottleneckTransformer(nnx.Module):
  """GN -> conv1x1 -> + 2-D sin-cos position -> [tokens | time token] -> decoder layers
  (self + cross attention) -> drop the time token -> GN -> conv1x1."""

  def __init__(
    self,
    in_features: int,
    grid: tuple[int, int],
    dim: int,
    num_layers: int,
    num_heads: int,
    mlp_ratio: int,
    context_dim: int,
    emb_dim: int,
    dropout: float,
    gn: tuple[int, float],
    ln_eps: float,
    pos_emb_max: float,
    precision: layers.Precision,
    *,
    rngs: nnx.Rngs,
    remat: str = 'none',
  ):
    self.remat = remat
    self.grid = grid
    self.norm_in = layers.GroupNorm(in_features, *gn, precision)
    self.conv_in = layers.conv(in_features, dim, 1, precision, rngs=rngs)
    self.pos_emb = nnx.Variable(jnp.asarray(layers.sincos_2d(*grid, dim, pos_emb_max)))
    self.time_proj = layers.dense(emb_dim, dim, ('mlp', 'embed'), precision, rngs=rngs)
    self.layers = nnx.List(
      [
        transformer.DecoderLayer(
          dim, num_heads, dim * mlp_ratio, context_dim, dropout, ln_eps, precision, rngs=rngs
        )
        for _ in range(num_layers)
      ]
    )
    self.norm_out = layers.GroupNorm(dim, *gn, precision)
    self.conv_out = layers.conv(dim, dim, 1, precision, rngs=rngs)

  def __call__(self, x: jax.Array, emb: jax.Array, context: jax.Array) -> jax.Array:
    """x (B, h, w, Cin), emb (B, E), context (B, S, Dc) -> (B, h, w, dim)."""
    x = self.conv_in(self.norm_in(x))
    batch, height, width, dim = x.shape
    tokens = x.reshape(batch, height * width, dim) + self.pos_emb[...].astype(x.dtype)
    tokens = jnp.concatenate([tokens, self.time_proj(emb)[:, None, :]], axis=1)
    tokens = transformer.run_layers(self.layers, tokens, context, remat=self.remat)
    x = tokens[:, :-1].reshape(batch, height, width, dim)
    return self.conv_out(self.norm_out(x))


class TransUNet(nnx.Module):
  """The denoiser: (x_t | fused image features | extra) and gamma -> 2 x 256-way logits.

  Down path: per level `num_res_blocks` ResBlocks and a stride-2 conv (all but the last level),
  every output kept as a skip. Bottleneck transformer at 1/2^(levels-1) of the mask. Up path: per
  level `num_res_blocks + 1` ResBlocks on concat(x, skip), nearest x2 + conv3x3 between levels.
  """

  def __init__(
    self,
    in_features: int,
    mask_size: tuple[int, int],
    dim: int,
    dim_mults: Sequence[int],
    num_res_blocks: int,
    dropout: float,
    time_scaling: float,
    time_mlp_mult: int,
    transformer_layers: int,
    transformer_dim: int,
    transformer_heads: int,
    transformer_mlp_ratio: int,
    transformer_dropout: float,
    context_dim: int,
    num_groups_out: int,
    logits_per_group: int,
    gn: tuple[int, float],
    ln_eps: float,
    pos_emb_max: float,
    zero_init_scale: float,
    precision: layers.Precision,
    *,
    rngs: nnx.Rngs,
    remat: str = 'none',
  ):
    self.remat = remat
    self.num_groups_out = num_groups_out
    self.logits_per_group = logits_per_group
    emb_dim = dim * time_mlp_mult
    self.time_emb = TimeEmbedding(dim, emb_dim, time_scaling, precision, rngs=rngs)
    widths = [dim * mult for mult in dim_mults]
    self.conv_in = layers.conv(in_features, widths[0], 1, precision, rngs=rngs)
    self.norm_in = layers.GroupNorm(widths[0], *gn, precision)
    res_block = lambda i, o: ResBlock(
      i, o, emb_dim, dropout, gn, zero_init_scale, precision, rngs=rngs
    )

    down, downsample, skip_widths, features = [], [], [widths[0]], widths[0]
    for level, width in enumerate(widths):
      blocks = []
      for _ in range(num_res_blocks):
        blocks.append(res_block(features, width))
        features = width
        skip_widths.append(features)
      down.append(nnx.List(blocks))
      if level < len(widths) - 1:
        downsample.append(layers.conv(features, width, 3, precision, strides=2, rngs=rngs))
        skip_widths.append(width)
    self.down = nnx.List(down)
    self.downsample = nnx.List(downsample)

    scale = 2 ** (len(widths) - 1)
    grid = (mask_size[0] // scale, mask_size[1] // scale)
    self.bottleneck = (
      BottleneckTransformer(
        features,
        grid,
        transformer_dim,
        transformer_layers,
        transformer_heads,
        transformer_mlp_ratio,
        context_dim,
        emb_dim,
        transformer_dropout,
        gn,
        ln_eps,
        pos_emb_max,
        precision,
        rngs=rngs,
        remat=remat,
      )
      if transformer_layers > 0
      else None
    )
    if self.bottleneck is not None:
      features = transformer_dim

    up, upsample = [], []
    for level in reversed(range(len(widths))):
      blocks = []
      for _ in range(num_res_blocks + 1):
        blocks.append(res_block(features + skip_widths.pop(), widths[level]))
        features = widths[level]
      up.append(nnx.List(blocks))
      if level > 0:
        upsample.append(layers.conv(features, features, 3, precision, rngs=rngs))
    self.up = nnx.List(up)
    self.upsample = nnx.List(upsample)
    self.norm_out = layers.GroupNorm(features, *gn, precision)
    self.conv_out = layers.conv(
      features,
      num_groups_out * logits_per_group,
      1,
      precision,
      rngs=rngs,
      init_scale=zero_init_scale,
    )

  def __call__(self, x: jax.Array, gamma: jax.Array, context: jax.Array) -> jax.Array:
    """x (B, Hm, Wm, Cin), gamma (B,), context (B, S, Dc) -> logits (B, Hm, Wm, G, K).

    The logits stay in the compute dtype (the output convolution's), so a bfloat16 model keeps
    half the bytes for the loss's backward pass; consumers take the softmax in float32.
    Every stage (stem, ResBlocks, up-sampling convolutions, head) runs under the `remat` policy.
    """
    emb = self.time_emb(gamma)
    # Each stage gets only the modules it uses: a rematerialised stage keeps its inputs.
    remat = lambda fn: layers.maybe_remat(fn, self.remat)
    run_block = remat(lambda block, h, e: block(h, e))
    x = remat(lambda conv, norm, h: norm(conv(h)))(self.conv_in, self.norm_in, x)
    skips = [x]
    for level, blocks in enumerate(self.down):
      for block in blocks:
        x = run_block(block, x, emb)
        skips.append(x)
      if level < len(self.downsample):
        x = self.downsample[level](x)
        skips.append(x)
    if self.bottleneck is not None:
      x = self.bottleneck(x, emb, context)
    # The concatenation happens inside the rematerialised block: x and the skip are kept anyway.
    up_block = remat(lambda block, h, skip, e: block(jnp.concatenate([h, skip], axis=-1), e))
    upsample = remat(lambda conv, h: conv(layers.upsample_nearest(h, 2)))
    for index, blocks in enumerate(self.up):
      for block in blocks:
        x = up_block(block, x, skips.pop(), emb)
      if index < len(self.upsample):
        x = upsample(self.upsample[index], x)
    logits = remat(lambda norm, conv, h: conv(jax.nn.silu(norm(h))))(
      self.norm_out, self.conv_out, x
    )
    return logits.reshape(logits.shape[:-1] + (self.num_groups_out, self.logits_per_group))
