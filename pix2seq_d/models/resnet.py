"""ResNet "C4" backbone: the stem and block groups 1-3 of a bottleneck ResNet (no stage 4).

BatchNorm statistics are taken over the global batch: under `jax.jit` with a batch sharded over the
mesh the mean over axis 0 is a cross-device reduction, so no explicit `axis_name` is needed.

As the reference: every convolution is initialised with VarianceScaling(1.0, fan_in, truncated
normal) (Keras' default), and a strided convolution pads (k - 1) // 2 zeros before and the rest
after, then convolves VALID, so a 3x3/2 kernel is centred on the even pixels its shortcut (1x1/2)
samples. 'SAME' would pad (0, 1) and shift the features half a pixel against the shortcut.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from pix2seq_d.models import layers

# Keras' VarianceScaling() default, the reference's initialiser of every ResNet convolution.
_CONV_INIT = nnx.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


def resnet_conv(
  in_features: int,
  out_features: int,
  kernel_size: int,
  strides: int,
  precision: layers.Precision,
  *,
  rngs: nnx.Rngs,
) -> nnx.Conv:
  """A bias-free ResNet convolution: SAME at stride 1, fixed symmetric padding when strided."""
  if strides == 1:
    padding = 'SAME'
  else:
    before = (kernel_size - 1) // 2
    padding = ((before, kernel_size - 1 - before),) * 2
  return layers.conv(
    in_features,
    out_features,
    kernel_size,
    precision,
    strides=strides,
    use_bias=False,
    kernel_init=_CONV_INIT,
    padding=padding,
    rngs=rngs,
  )


class BatchNorm(nnx.Module):
  """BatchNorm in float32 whose parameters and statistics carry the `norm` logical axis."""

  def __init__(
    self,
    num_features: int,
    momentum: float,
    epsilon: float,
    precision: layers.Precision,
    *,
    rngs: nnx.Rngs,
    zero_scale: bool = False,
  ):
    metadata = layers.sharding_metadata(('norm',))
    self.norm = nnx.BatchNorm(
      num_features,
      momentum=momentum,
      epsilon=epsilon,
      dtype=jnp.float32,
      param_dtype=precision.param_dtype,
      scale_init=nnx.initializers.zeros if zero_scale else nnx.initializers.ones,
      scale_metadata=metadata,
      bias_metadata=metadata,
      rngs=rngs,
    )
    self.norm.mean.set_metadata('out_sharding', ('norm',))
    self.norm.var.set_metadata('out_sharding', ('norm',))

  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H, W, C) in x's dtype."""
    return self.norm(x.astype(jnp.float32)).astype(x.dtype)


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (carries the stride) -> 1x1 (x4 channels) with a projection shortcut."""

  def __init__(
    self,
    in_features: int,
    width: int,
    strides: int,
    bn: tuple[float, float],
    precision: layers.Precision,
    *,
    rngs: nnx.Rngs,
  ):
    out_features = 4 * width
    conv = lambda i, o, k, s=1: resnet_conv(i, o, k, s, precision, rngs=rngs)
    self.conv1 = conv(in_features, width, 1)
    self.bn1 = BatchNorm(width, *bn, precision, rngs=rngs)
    self.conv2 = conv(width, width, 3, strides)
    self.bn2 = BatchNorm(width, *bn, precision, rngs=rngs)
    self.conv3 = conv(width, out_features, 1)
    # Zero-initialised last scale: each block starts as the identity, which trains stably.
    self.bn3 = BatchNorm(out_features, *bn, precision, rngs=rngs, zero_scale=True)
    if strides != 1 or in_features != out_features:
      self.proj = conv(in_features, out_features, 1, strides)
      self.proj_bn = BatchNorm(out_features, *bn, precision, rngs=rngs)
    else:
      self.proj = None

  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, Cin) -> (B, H / s, W / s, 4 * width)."""
    shortcut = x if self.proj is None else self.proj_bn(self.proj(x))
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = jax.nn.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return jax.nn.relu(y + shortcut)


class ResNetC4(nnx.Module):
  """Stem (7x7/2 conv + 3x3/2 max-pool) and `len(stage_sizes)` bottleneck block groups.

  With stage_sizes (3, 4, 6) and width 64 this is ResNet-50 up to C4 (8.54M parameters).
  """

  def __init__(
    self,
    stage_sizes: Sequence[int],
    width: int,
    bn_momentum: float,
    bn_eps: float,
    precision: layers.Precision,
    *,
    rngs: nnx.Rngs,
    remat: str = 'none',
  ):
    bn = (bn_momentum, bn_eps)
    self.stem = resnet_conv(3, width, 7, 2, precision, rngs=rngs)
    self.stem_bn = BatchNorm(width, *bn, precision, rngs=rngs)
    self.remat = remat
    blocks, features = [], width
    self.out_channels = []
    for stage, num_blocks in enumerate(stage_sizes):
      stage_width = width * 2**stage
      for index in range(num_blocks):
        strides = 2 if (stage > 0 and index == 0) else 1
        blocks.append(Bottleneck(features, stage_width, strides, bn, precision, rngs=rngs))
        features = 4 * stage_width
      self.out_channels.append(features)
    self.blocks = nnx.List(blocks)
    self.stage_sizes = tuple(stage_sizes)

  def __call__(self, images: jax.Array) -> list[jax.Array]:
    """(B, H, W, 3) in [0, 1] -> [C2 (B, H/4, W/4, 4w), C3 (H/8, 8w), ..., C(1+n) (H/2^(n+1))]."""
    stem = lambda conv, bn, h: nnx.max_pool(
      jax.nn.relu(bn(conv(h))), window_shape=(3, 3), strides=(2, 2), padding='SAME'
    )
    x = layers.maybe_remat(stem, self.remat)(self.stem, self.stem_bn, images)
    outputs, block_index = [], 0
    run_block = layers.maybe_remat(lambda block, h: block(h), self.remat)
    for num_blocks in self.stage_sizes:
      for _ in range(num_blocks):
        x = run_block(self.blocks[block_index], x)
        block_index += 1
      outputs.append(x)
    return outputs
