"""The authors' TF2 encoder weights (google-research/pix2seq) onto our ResNet-C4 + transformer.

`--config.init_from.path=CKPT --config.init_from.format=tf` (with init_from.mode='encoder') starts
a run from a TF checkpoint of their `ResNetTransformer` image encoder, e.g. the Objects365
pretrained ResNet-50 C4 their README publishes. The table below maps each of their variable names
(relative to the encoder's scope in the checkpoint: `encoder/`, or `model/encoder/` in a training
checkpoint) to our parameter or BatchNorm statistic:

  theirs (under the scope)                              ours
  resnet/initial_conv_relu_max_pool/0/conv2d/kernel     resnet/stem/kernel
  resnet/initial_conv_relu_max_pool/2/bn/X              resnet/stem_bn/norm/Y
  resnet/block_groups/g/layers/i/
    conv_relu_dropblock_layers/{0, 3, 6}/conv2d/kernel  resnet/blocks/k/conv{1, 2, 3}/kernel
    conv_relu_dropblock_layers/{1, 4, 7}/bn/X           resnet/blocks/k/bn{1, 2, 3}/norm/Y
    projection_layers/0/conv2d/kernel, 1/bn/X           resnet/blocks/k/proj/kernel, proj_bn/norm/Y
  stem_projection/{kernel, bias}, stem_ln               encoder/proj, encoder/proj_norm
  transformer_encoder/enc_layers/j/
    mha_ln                                              encoder/layers/j/attn_norm
    mha/_{query, key, value}_dense (D, H, D / H)        encoder/layers/j/attn/{query, key, value}
    mha/_output_dense (H, D / H, D)                     encoder/layers/j/attn/out
    mlp/layernorms/0, mlp/mlp_layers/0/dense{1, 2}      encoder/layers/j/mlp_norm, mlp/fc{1, 2}
  output_ln                                             encoder/norm

with X -> Y: gamma -> scale, beta -> bias, moving_mean -> mean, moving_variance -> var (the
statistics go to the model state), and attention kernels and biases reshaped to ours, heads
flattened (D, H * D / H); k numbers the bottlenecks over all groups. Their sin-cos position
embedding is computed, not stored, and equals ours (positions over [0, model.pos_emb_max]), so
any grid size loads. Every variable of their encoder must map onto a parameter of the same shape
and every one of our encoder parameters must be found: anything else is a ValueError naming the
variables. The fusion and denoiser keep their fresh initialisation; the EMA weights start equal
to the loaded ones.

TensorFlow reads the checkpoint (it is installed with the data pipeline); no TF code of theirs is
needed.
"""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from pix2seq_d.runtime import checkpoints, init_from

_VALUE = '/.ATTRIBUTES/VARIABLE_VALUE'
_STEM_CONV = 'resnet/initial_conv_relu_max_pool/0/conv2d/kernel'
_BATCH_NORM = {'gamma': 'scale', 'beta': 'bias', 'moving_mean': 'mean', 'moving_variance': 'var'}
_LAYER_NORM = {'gamma': 'scale', 'beta': 'bias'}
# Their bottleneck's layer lists -> ours: (their sub-path, our module, kind).
_BOTTLENECK = (
  ('conv_relu_dropblock_layers/0/conv2d', 'conv1', 'conv'),
  ('conv_relu_dropblock_layers/1/bn', 'bn1', 'bn'),
  ('conv_relu_dropblock_layers/3/conv2d', 'conv2', 'conv'),
  ('conv_relu_dropblock_layers/4/bn', 'bn2', 'bn'),
  ('conv_relu_dropblock_layers/6/conv2d', 'conv3', 'conv'),
  ('conv_relu_dropblock_layers/7/bn', 'bn3', 'bn'),
)
_PROJECTION = (
  ('projection_layers/0/conv2d', 'proj', 'conv'),
  ('projection_layers/1/bn', 'proj_bn', 'bn'),
)


def _module(theirs: str, ours: tuple[str, ...], kind: str) -> dict[str, tuple[str, ...]]:
  """Their variable names of one module -> our (collection, *path) for conv / bn / ln / dense."""
  if kind == 'conv':
    return {f'{theirs}/kernel': ('params', *ours, 'kernel')}
  if kind == 'bn':
    return {
      f'{theirs}/{name}': (
        'model_state' if name.startswith('moving') else 'params',
        *ours,
        'norm',
        field,
      )
      for name, field in _BATCH_NORM.items()
    }
  if kind == 'ln':
    return {f'{theirs}/{name}': ('params', *ours, field) for name, field in _LAYER_NORM.items()}
  return {
    f'{theirs}/kernel': ('params', *ours, 'kernel'),
    f'{theirs}/bias': ('params', *ours, 'bias'),
  }


def name_table(
  stage_sizes: Sequence[int], num_layers: int, has_projection: Sequence[bool]
) -> dict[str, tuple[str, ...]]:
  """Their encoder-relative variable names -> our state paths ('params' / 'model_state', ...).

  Args:
    stage_sizes: bottlenecks per block group (config.model.resnet.stage_sizes).
    num_layers: transformer layers (config.model.encoder.num_layers).
    has_projection: per bottleneck (numbered over all groups), whether it has a projection
      shortcut.
  """
  table = {}
  table.update(_module(_STEM_CONV[: -len('/kernel')], ('resnet', 'stem'), 'conv'))
  table.update(_module('resnet/initial_conv_relu_max_pool/2/bn', ('resnet', 'stem_bn'), 'bn'))
  block = 0
  for group, num_blocks in enumerate(stage_sizes):
    for index in range(num_blocks):
      theirs = f'resnet/block_groups/{group}/layers/{index}'
      parts = _BOTTLENECK + (_PROJECTION if has_projection[block] else ())
      for sub, module, kind in parts:
        table.update(_module(f'{theirs}/{sub}', ('resnet', 'blocks', str(block), module), kind))
      block += 1
  table.update(_module('stem_projection', ('encoder', 'proj'), 'dense'))
  table.update(_module('stem_ln', ('encoder', 'proj_norm'), 'ln'))
  for layer in range(num_layers):
    theirs = f'transformer_encoder/enc_layers/{layer}'
    ours = ('encoder', 'layers', str(layer))
    table.update(_module(f'{theirs}/mha_ln', (*ours, 'attn_norm'), 'ln'))
    for their_name, our_name in (
      ('query', 'query'),
      ('key', 'key'),
      ('value', 'value'),
      ('output', 'out'),
    ):
      table.update(_module(f'{theirs}/mha/_{their_name}_dense', (*ours, 'attn', our_name), 'dense'))
    table.update(_module(f'{theirs}/mlp/layernorms/0', (*ours, 'mlp_norm'), 'ln'))
    for dense, fc in (('dense1', 'fc1'), ('dense2', 'fc2')):
      table.update(_module(f'{theirs}/mlp/mlp_layers/0/{dense}', (*ours, 'mlp', fc), 'dense'))
  table.update(_module('output_ln', ('encoder', 'norm'), 'ln'))
  return table


def _encoder_scope(names: Sequence[str], path: str, from_ema: bool) -> str:
  """The scope ('encoder/', 'model/encoder/', ...) of the encoder in a checkpoint's names."""
  scopes = sorted(
    name[: -len(_STEM_CONV + _VALUE)] for name in names if name.endswith(_STEM_CONV + _VALUE)
  )
  if not scopes:
    raise ValueError(
      f'config.init_from.path={path!r}: no variable ends in {_STEM_CONV}; this is not a checkpoint '
      'of the pix2seq TF ResNetTransformer encoder (config.init_from.format=tf).'
    )
  wanted = 'encoder_ema/' if from_ema else 'encoder/'
  matching = [scope for scope in scopes if scope.endswith(wanted) or scope == wanted]
  if len(matching) != 1:
    raise ValueError(
      f'config.init_from.path={path!r}: encoder scopes {scopes}; expected one ending in {wanted!r}.'
    )
  return matching[0]


def _fits(name: str, theirs: tuple[int, ...], ours: tuple[int, ...]) -> bool:
  """Same shape; or, for attention, ours with the heads flattened: q / k / v kernels (D, H, K)
  -> (D, H K), output kernel (H, K, D) -> (H K, D), biases (H, K) -> (H K,)."""
  theirs, ours = tuple(theirs), tuple(ours)
  if theirs == ours:
    return True
  if '/mha/' not in name or int(np.prod(theirs)) != int(np.prod(ours)):
    return False
  if len(theirs) == 3:
    return theirs[0] == ours[0] if '/_output_dense/' not in name else theirs[-1] == ours[-1]
  return len(theirs) == 2 and len(ours) == 1


def read_encoder(
  path: str, table: dict[str, tuple[str, ...]], shapes: dict[tuple, tuple], from_ema: bool = False
) -> dict[tuple[str, ...], np.ndarray]:
  """Reads their encoder's variables as {our state path: array of our shape}.

  Args:
    path: a TF checkpoint prefix, or a folder (its latest checkpoint).
    table: `name_table`.
    shapes: our state path -> shape, for every path of the table.
    from_ema: read their EMA encoder (`encoder_ema/`) instead.

  Raises:
    ValueError: naming the variables that are not in the table, missing, or of another size.
  """
  import tensorflow as tf  # only this format needs it; the model and trainer never import it.

  prefix = tf.train.latest_checkpoint(path) if tf.io.gfile.isdir(path) else path
  if not prefix:
    raise FileNotFoundError(f'config.init_from.path={path!r} holds no TF checkpoint.')
  reader = tf.train.load_checkpoint(prefix)
  names = [
    name
    for name in reader.get_variable_to_shape_map()
    if name.endswith(_VALUE) and '.OPTIMIZER_SLOT' not in name
  ]
  scope = _encoder_scope(names, path, from_ema)
  theirs = {name[len(scope) : -len(_VALUE)] for name in names if name.startswith(scope)}
  unmapped = sorted(theirs - set(table))
  missing = sorted(set(table) - theirs)
  if unmapped or missing:
    raise ValueError(
      f'{prefix} ({scope}): {len(unmapped)} variables without a place in our encoder '
      f'{unmapped[:8]}, and {len(missing)} of ours not in the checkpoint {missing[:8]}; is '
      'config.model.resnet / encoder the architecture of that checkpoint?'
    )
  arrays, wrong = {}, []
  for name, ours in table.items():
    value = reader.get_tensor(scope + name + _VALUE)
    if _fits(name, value.shape, shapes[ours]):
      arrays[ours] = value.reshape(shapes[ours])
    else:
      wrong.append(f'{name} {value.shape} vs {"/".join(ours)} {shapes[ours]}')
  if wrong:
    raise ValueError(f'{prefix}: variables of other shapes than ours: {wrong[:8]}')
  return arrays


def restore_encoder(
  path: str, state: Any, stage_sizes: Sequence[int], num_layers: int, from_ema: bool = False
) -> Any:
  """`state` (a fresh, sharded steps.TrainState) with their encoder's weights in resnet/, encoder/.

  Args:
    path: config.init_from.path, a TF checkpoint prefix or folder.
    state: the fresh train state; loaded arrays take its leaves' dtypes and shardings.
    stage_sizes, num_layers: config.model.resnet.stage_sizes, config.model.encoder.num_layers.
    from_ema: load their EMA encoder.
  """
  fresh = dict(checkpoints.flat_state(state))
  blocks = sum(stage_sizes)
  has_projection = [
    ('params', 'resnet', 'blocks', str(k), 'proj', 'kernel') in fresh for k in range(blocks)
  ]
  table = name_table(stage_sizes, num_layers, has_projection)
  shapes = {ours: tuple(checkpoints.leaf_value(fresh[ours]).shape) for ours in table.values()}
  arrays = read_encoder(path, table, shapes, from_ema)
  updates = {}
  for ours, value in arrays.items():
    leaf = checkpoints.leaf_value(fresh[ours])
    updates[ours] = jax.device_put(value.astype(leaf.dtype), leaf.sharding)
  logging.info(
    'init_from %s (format tf): loaded %d arrays of the TF encoder into resnet/ and '
    'encoder/; fusion and denoiser keep their fresh init.',
    path,
    len(updates),
  )
  return init_from.with_arrays(state, updates)
