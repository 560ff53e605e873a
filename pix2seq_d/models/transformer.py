"""Pre-LayerNorm transformer layers: the image encoder's stack and the denoiser's bottleneck."""

import jax
from flax import nnx

from pix2seq_d.models import layers


class EncoderLayer(nnx.Module):
  """x + DropPath(SelfAttn(LN(x))); x + DropPath(MLP(LN(x))).

  As the reference: dropout acts only inside the MLP (after the GELU); the residual branches
  see drop-path, not dropout.
  """

  def __init__(
    self,
    dim: int,
    num_heads: int,
    mlp_dim: int,
    dropout: float,
    drop_path: float,
    ln_eps: float,
    precision: layers.Precision,
    *,
    rngs: nnx.Rngs,
  ):
    self.attn_norm = layers.LayerNorm(dim, ln_eps, precision)
    self.attn = layers.Attention(dim, num_heads, precision, rngs=rngs)
    self.mlp_norm = layers.LayerNorm(dim, ln_eps, precision)
    self.mlp = layers.Mlp(dim, mlp_dim, dropout, precision, rngs=rngs)
    self.drop_path = layers.DropPath(drop_path, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, L, D) -> (B, L, D)."""
    x = x + self.drop_path(self.attn(self.attn_norm(x)))
    return x + self.drop_path(self.mlp(self.mlp_norm(x)))


class DecoderLayer(nnx.Module):
  """Self-attention, cross-attention to `context`, then MLP; each pre-LN and residual.

  Dropout acts only inside the MLP, as in the reference (whose drop-path is 0 in the denoiser).
  """

  def __init__(
    self,
    dim: int,
    num_heads: int,
    mlp_dim: int,
    context_dim: int,
    dropout: float,
    ln_eps: float,
    precision: layers.Precision,
    *,
    rngs: nnx.Rngs,
  ):
    self.self_norm = layers.LayerNorm(dim, ln_eps, precision)
    self.self_attn = layers.Attention(dim, num_heads, precision, rngs=rngs)
    self.cross_norm = layers.LayerNorm(dim, ln_eps, precision)
    self.cross_attn = layers.Attention(dim, num_heads, precision, rngs=rngs, kv_dim=context_dim)
    self.mlp_norm = layers.LayerNorm(dim, ln_eps, precision)
    self.mlp = layers.Mlp(dim, mlp_dim, dropout, precision, rngs=rngs)

  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    """x (B, L, D), context (B, S, Dc) -> (B, L, D)."""
    x = x + self.self_attn(self.self_norm(x))
    x = x + self.cross_attn(self.cross_norm(x), context)
    return x + self.mlp(self.mlp_norm(x))


def run_layers(stack: nnx.List, x: jax.Array, *args, remat: str = 'none') -> jax.Array:
  """Applies the layers of `stack` in order, each rematerialised under the `remat` policy."""
  step = layers.maybe_remat(lambda layer, h, *a: layer(h, *a), remat)
  for layer in stack:
    x = step(layer, x, *args)
  return x
