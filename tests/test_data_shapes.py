"""Tests of the embedded synthetic datasets (pix2seq_d.data.shapes)."""

import json
import math
import socket
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pix2seq_d.data import registry, shapes


def _all_examples(builder, split):
  return list(tfds.as_numpy(builder.as_dataset(split=split)))


def test_default_sets_prepare_without_network(tmp_path, monkeypatch):
  def no_network(*args, **kwargs):
    raise AssertionError(f'shapes tried to open a network connection: {args}')

  monkeypatch.setattr(socket.socket, 'connect', no_network)
  start = time.time()
  for name in ('shapes', 'shapes_video'):
    builder = shapes.make_builder(name, str(tmp_path))
    builder.download_and_prepare()
    assert set(builder.info.splits) == {'train', 'test'}
    assert builder.info.splits['train'].num_examples > builder.info.splits['test'].num_examples
  # ~8 s on one idle core (printed, not asserted: speed is a benchmark's business).
  print(f'preparing shapes + shapes_video took {time.time() - start:.1f} s')
  assert shapes.make_builder('shapes', str(tmp_path)).info.splits['train'].num_examples >= 1000


def test_images_re_render_exactly(shapes_data_dir):
  builder = shapes.make_builder('shapes/tiny', shapes_data_dir)
  config = builder.builder_config
  colours_per_class = {}
  for split in ('train', 'test'):
    examples = _all_examples(builder, split)
    assert len(examples) == getattr(config, f'num_{split}')
    for example in examples:
      scene = json.loads(example['scene'])
      image, semantic, instance = shapes.render_image(scene, config.height, config.width)
      np.testing.assert_array_equal(example['image'], image)
      np.testing.assert_array_equal(example['semantic'][..., 0], semantic)
      np.testing.assert_array_equal(example['instance'][..., 0], instance)
      # Re-generating from the seed gives the same scene.
      again = shapes.generate_image_example(config, split, int(example['image_id']))
      assert json.loads(again['scene']) == scene
      # Instance ids are the visible segments 1..S; every pixel is labelled.
      assert set(np.unique(instance)) == set(range(1, instance.max() + 1))
      assert config.min_objects <= len(scene['objects']) <= config.max_objects
      for obj in scene['objects']:
        assert obj['size'] >= config.min_size
        colours_per_class.setdefault(obj['shape'], set()).add(tuple(np.round(obj['color'], -1)))
      for segment in np.unique(instance):
        assert len(np.unique(semantic[instance == segment])) == 1
  # Colour is not tied to class.
  assert all(len(colours) > 1 for colours in colours_per_class.values())


def test_shape_masks_have_the_right_area():
  size = 40
  areas = {
    'circle': math.pi * (size / 2) ** 2,
    'square': size**2,
    'triangle': math.sqrt(3) / 4 * size**2,
  }
  for name, area in areas.items():
    obj = {
      'shape': name,
      'center': [50.3, 49.7],
      'size': float(size),
      'angle': 0.7,
      'velocity': [0.0, 0.0],
    }
    mask = shapes.shape_mask(obj, 100, 100)
    assert abs(mask.sum() - area) < 0.03 * area, (name, mask.sum(), area)


def test_decode_gives_the_canonical_example(shapes_data_dir):
  source = registry.get_source(_config('shapes/tiny', shapes_data_dir))
  assert [c['name'] for c in source.categories] == ['circle', 'square', 'triangle', 'sky', 'ground']
  assert [c['isthing'] for c in source.categories] == [1, 1, 1, 0, 0]
  assert not source.clips
  example = next(iter(source.builder.as_dataset(split='train').map(source.decode)))
  assert example['image'].dtype.name == 'uint8' and example['image'].shape == (64, 64, 3)
  for key in ('semantic', 'instance', 'crowd'):
    assert example[key].dtype.name == 'int32' and example[key].shape == (64, 64)
  assert int(np.max(example['crowd'])) == 0
  assert example['image_id'].dtype.name == 'int64' and example['error'].numpy() == b''


def test_clips_re_render_with_consistent_track_ids(shapes_data_dir):
  builder = shapes.make_builder('shapes_video/tiny', shapes_data_dir)
  config = builder.builder_config
  for split in ('train', 'test'):
    for clip in _all_examples(builder, split):
      scene = json.loads(clip['scene'])
      frames, semantic, instance = shapes.render_clip(
        scene, config.height, config.width, config.num_frames
      )
      np.testing.assert_array_equal(clip['frames'], frames)
      np.testing.assert_array_equal(clip['semantic'][..., 0], semantic)
      np.testing.assert_array_equal(clip['instance'][..., 0], instance)
      for k, obj in enumerate(scene['objects']):
        track = shapes.FIRST_OBJECT_TRACK_ID + k
        cls = shapes.SHAPE_NAMES.index(obj['shape']) + 1
        for t in range(config.num_frames):
          pixels = instance[t] == track
          # The same id always marks the same object: its class and (noisy) colour.
          assert (semantic[t][pixels] == cls).all()
          if pixels.any():
            mean = frames[t][pixels].mean(0)
            assert np.abs(mean - obj['color']).max() < 4 * config.noise_std
          if not shapes.shape_mask(obj, config.height, config.width, t).any():
            assert not pixels.any()


def test_tracks_leave_the_frame():
  config = shapes._VIDEO_CONFIGS[0]
  left = 0
  for index in range(config.num_train):
    scene = json.loads(shapes.generate_video_example(config, 'train', index)['scene'])
    for obj in scene['objects']:
      visible = [
        shapes.shape_mask(obj, config.height, config.width, t).any()
        for t in range(config.num_frames)
      ]
      left += visible[0] and not visible[-1]
  assert left > 0


def test_unknown_names_are_rejected():
  with pytest.raises(ValueError, match='unknown builder config'):
    shapes.make_builder('shapes/huge')
  with pytest.raises(ValueError, match='shapes_video'):
    shapes.make_builder('circles')


def _config(name, data_dir):
  from configs import shapes as shapes_configs

  config = shapes_configs.get_config('video' if name.startswith('shapes_video') else '')
  config.data.name = name
  config.data.data_dir = data_dir
  return config
