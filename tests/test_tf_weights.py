"""Starting from the reference's TF encoder weights (config.init_from.format=tf).

tests/data/pix2seq_tf_encoder_variables.json lists (name, shape) of every variable in a TF
checkpoint of the reference's image encoder, `ResNetTransformer` of google-research/pix2seq as
its panoptic configs build it (ResNet-50 C4, 12 layers, width 512, 16 heads, MLP 2048), written
by running their TF code once with random weights (`tf.train.Checkpoint(encoder=...)`).
"""

import json
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from configs import coco, shapes
from pix2seq_d.loops import state as state_lib
from pix2seq_d.parallel import sharding
from pix2seq_d.runtime import checkpoints, tf_weights

FIXTURE = os.path.join(os.path.dirname(__file__), 'data', 'pix2seq_tf_encoder_variables.json')
SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'


def _table_and_shapes(config):
  """The name table for `config`'s model and our shapes of its entries (abstract, no arrays)."""
  model = nnx.eval_shape(lambda: state_lib.build_model(config, rngs=nnx.Rngs(0)))
  state = {'params': nnx.state(model, nnx.Param), 'model_state': nnx.state(model, nnx.BatchStat)}
  flat = {
    path: tuple(checkpoints.leaf_value(leaf).shape) for path, leaf in checkpoints.flat_state(state)
  }
  stage_sizes = tuple(config.model.resnet.stage_sizes)
  has_projection = [
    ('params', 'resnet', 'blocks', str(k), 'proj', 'kernel') in flat
    for k in range(sum(stage_sizes))
  ]
  table = tf_weights.name_table(stage_sizes, config.model.encoder.num_layers, has_projection)
  return table, flat


def test_every_reference_variable_has_a_place_of_its_shape():
  with open(FIXTURE) as f:
    reference = {name[len('encoder/') : -len(SUFFIX)]: tuple(shape) for name, shape in json.load(f)}
  table, ours = _table_and_shapes(coco.get_config())
  assert set(table) == set(reference)  # nothing unmapped, nothing missing
  for name, path in table.items():
    assert path in ours, path
    assert tf_weights._fits(name, reference[name], ours[path]), (name, reference[name], ours[path])
  # Every parameter and BatchNorm statistic of our ResNet and transformer encoder is covered.
  encoder_paths = {p for p in ours if p[1] in ('resnet', 'encoder')}
  assert encoder_paths == set(table.values())


def _their_shape(name, ours, heads):
  """Our shape as the reference stores it (attention with a heads axis)."""
  if '/mha/' not in name:
    return ours
  if len(ours) == 1:
    return (heads, ours[0] // heads) if '_output_dense' not in name else ours
  if '_output_dense' in name:
    return (heads, ours[0] // heads, ours[1])
  return (ours[0], heads, ours[1] // heads)


def _write_tf_checkpoint(path, arrays):
  """A TF object-based checkpoint whose keys are `arrays`' names, as their encoder writes them."""
  tree = {}
  for name, value in arrays.items():
    node = tree
    parts = name.split('/')
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = tf.Variable(value)
  return tf.train.Checkpoint(**tree).write(str(path))


def _small_config():
  config = shapes.get_config('tiny')
  config.model.dtype = 'float32'
  return config


def test_weights_land_in_their_places_and_mismatches_are_named(tmp_path):
  seed = int(np.random.SeedSequence().entropy % 2**32)
  print('seed', seed)
  rng = np.random.default_rng(seed)
  config = _small_config()
  heads = config.model.encoder.num_heads
  table, ours = _table_and_shapes(config)
  arrays = {
    f'model/encoder/{name}': rng.normal(size=_their_shape(name, ours[path], heads)).astype(
      np.float32
    )
    for name, path in table.items()
  }
  # A training checkpoint also holds other modules and optimiser slots: they are not read.
  arrays['model/decoder/some_dense/kernel'] = np.zeros((3, 3), np.float32)
  prefix = _write_tf_checkpoint(tmp_path / 'good' / 'ckpt', arrays)

  mesh = sharding.make_mesh(config.mesh)
  state, *_ = state_lib.build_train_state(config, mesh)
  loaded = tf_weights.restore_encoder(
    prefix, state, config.model.resnet.stage_sizes, config.model.encoder.num_layers
  )
  flat = dict(checkpoints.flat_state(loaded))
  for name, path in table.items():
    np.testing.assert_array_equal(
      np.asarray(checkpoints.leaf_value(flat[path])),
      arrays[f'model/encoder/{name}'].reshape(ours[path]),
      err_msg=name,
    )
    ema = ('ema_params' if path[0] == 'params' else 'ema_model_state',) + path[1:]
    np.testing.assert_array_equal(
      np.asarray(checkpoints.leaf_value(flat[ema])), np.asarray(checkpoints.leaf_value(flat[path]))
    )
  # The denoiser keeps its fresh init.
  kernel = ('params', 'denoiser', 'conv_in', 'kernel')
  np.testing.assert_array_equal(
    np.asarray(checkpoints.leaf_value(flat[kernel])),
    np.asarray(checkpoints.leaf_value(dict(checkpoints.flat_state(state))[kernel])),
  )

  # An extra variable, a missing one, and one of another shape: each named.
  extra = dict(arrays, **{'model/encoder/stem_projection/extra_scale': np.ones(4, np.float32)})
  with pytest.raises(ValueError, match=r'1 variables without a place.*stem_projection/extra'):
    tf_weights.restore_encoder(
      _write_tf_checkpoint(tmp_path / 'extra' / 'ckpt', extra),
      state,
      config.model.resnet.stage_sizes,
      config.model.encoder.num_layers,
    )
  missing = {k: v for k, v in arrays.items() if not k.endswith('output_ln/gamma')}
  with pytest.raises(ValueError, match=r"1 of ours not in the checkpoint \['output_ln/gamma'\]"):
    tf_weights.restore_encoder(
      _write_tf_checkpoint(tmp_path / 'missing' / 'ckpt', missing),
      state,
      config.model.resnet.stage_sizes,
      config.model.encoder.num_layers,
    )
  wrong = dict(arrays, **{'model/encoder/stem_projection/bias': np.zeros(7, np.float32)})
  with pytest.raises(
    ValueError, match=r'stem_projection/bias \(7,\) vs params/encoder/proj/bias \(32,\)'
  ):
    tf_weights.restore_encoder(
      _write_tf_checkpoint(tmp_path / 'wrong' / 'ckpt', wrong),
      state,
      config.model.resnet.stage_sizes,
      config.model.encoder.num_layers,
    )
  with pytest.raises(ValueError, match='not a checkpoint of the pix2seq TF ResNetTransformer'):
    tf_weights.restore_encoder(
      _write_tf_checkpoint(
        tmp_path / 'other' / 'ckpt', {'model/decoder/kernel': np.zeros(2, np.float32)}
      ),
      state,
      config.model.resnet.stage_sizes,
      config.model.encoder.num_layers,
    )
  assert jax.tree.structure(loaded) == jax.tree.structure(state)
