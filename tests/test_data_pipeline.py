"""Tests of pix2seq_d.data.pipeline on the tiny embedded datasets (real TFDS and tf.data)."""

import dataclasses
import itertools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from pix2seq_d.config import data_facts
from pix2seq_d.data import eval_pipeline, pipeline, registry, shapes, splits
from pix2seq_d.tasks import registry as task_registry
from pix2seq_d.tasks.registry import get_task

SKY = shapes.SKY_LABEL


def _image_ids(builder, instruction):
  return [int(e['image_id']) for e in tfds.as_numpy(builder.as_dataset(split=instruction))]


def _raw_by_id(builder, split):
  return {int(e['image_id']): e for e in tfds.as_numpy(builder.as_dataset(split=split))}


def _no_augmentation(config):
  config.data.scale_jitter = (1.0, 1.0)
  config.data.flip = False
  config.data.color_jitter_strength = 0.0
  return config


def _with_decode(source, transform):
  """The source with `transform(canonical, raw)` applied after its decode."""
  return dataclasses.replace(source, decode=lambda raw: transform(source.decode(raw), raw))


def test_dataset_info(shapes_config):
  info = pipeline.dataset_info(shapes_config())
  assert info.num_classes == 6 and len(info.categories) == 5
  assert (info.num_train, info.num_eval) == (64, 24)
  video = pipeline.dataset_info(shapes_config('video'))
  assert (video.num_train, video.num_eval) == (6, 3)


@pytest.mark.parametrize('split,count', [('train', 2), ('train', 3), ('train[:10]+test', 3)])
def test_processes_read_disjoint_shares_covering_the_split(shapes_data_dir, split, count):
  builder = shapes.make_builder('shapes/tiny', shapes_data_dir)
  shares = []
  for index in range(count):
    instruction, size = splits.process_read_instruction(builder, split, index, count)
    shares.append(_image_ids(builder, instruction))
    assert len(shares[-1]) == size
  sizes = [len(share) for share in shares]
  assert max(sizes) - min(sizes) <= 1
  everything = sum(shares, [])
  assert sorted(everything) == sorted(_image_ids(builder, split))
  assert len(everything) == splits.num_split_examples(builder, split)
  if split == 'train':  # image ids are unique within one split: the shares are disjoint.
    assert len(set(everything)) == len(everything)


def test_train_batches_are_reproducible_and_differ_per_process(shapes_config):
  config = shapes_config()
  config.data.scale_jitter = (0.5, 2.0)
  config.data.color_jitter_strength = 1.0

  def first_batches(process_index):
    iterator = get_task(config).train_iterator(process_index=process_index, process_count=2)
    return [next(iterator) for _ in range(2)]

  first, again, other = first_batches(0), first_batches(0), first_batches(1)
  for batch, same, different in zip(first, again, other, strict=True):
    assert batch['image'].shape == (4, 64, 64, 3) and batch['image'].dtype == np.float32
    assert batch['label'].shape == (4, 32, 32, 2) and batch['label'].dtype == np.int32
    assert 0.0 <= batch['image'].min() and batch['image'].max() <= 1.0
    assert batch['label'][..., 0].max() < 6 and batch['label'][..., 1].max() < 16
    for key in ('image', 'label'):
      np.testing.assert_array_equal(batch[key], same[key])
    assert not np.array_equal(batch['image'], different['image'])


@pytest.mark.parametrize('arg, process_count', [('', 1), ('', 2), ('video', 1)])
def test_resumed_stream_continues_the_uninterrupted_one(shapes_config, arg, process_count):
  """A run resumed after k batches gets exactly the batches an uninterrupted run gets next,
  on every process; the positions it starts from were never handed out before the resume."""
  config = shapes_config(arg)
  config.data.scale_jitter = (0.5, 2.0)  # augmentation on: it must continue too
  config.train.batch_size = 2 * process_count
  resumed_after = int(np.random.default_rng().integers(1, 6))
  print(f'resumed after {resumed_after} batches, {process_count} process(es), {arg or "images"}')
  for process_index in range(process_count):
    make = lambda start, i=process_index: get_task(config).train_iterator(
      process_index=i, process_count=process_count, start_position=start
    )
    uninterrupted = make(0)
    before = [next(uninterrupted) for _ in range(resumed_after)]
    position = uninterrupted.position
    after = [next(uninterrupted) for _ in range(3)]
    resumed = make(position)
    assert resumed.position == position
    for expected, got in zip(after, (next(resumed) for _ in range(3)), strict=True):
      assert sorted(got) == sorted(expected)
      for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert resumed.position == uninterrupted.position > position
    # No example (with its augmentation) handed out before the resume comes again after it.
    rows = lambda batches: {row.tobytes() for batch in batches for row in batch['image']}
    assert not rows(before) & rows(after)


def test_instance_permutation_changes_every_epoch(shapes_config):
  config = _no_augmentation(shapes_config())
  config.data.instance_id_order = 'random'  # the paper's ids (configs/shapes.py: by location)
  config.data.train_split = 'train[:1]'  # every batch holds the same example from 2 epochs.
  config.train.batch_size = 2
  iterator = get_task(config).train_iterator(process_index=0, process_count=1)
  mappings = set()
  for batch in itertools.islice(iterator, 3):
    np.testing.assert_array_equal(batch['image'][0], batch['image'][1])
    np.testing.assert_array_equal(batch['label'][0, ..., 0], batch['label'][1, ..., 0])
    first, second = batch['label'][0, ..., 1], batch['label'][1, ..., 1]
    pairs = set(zip(first.ravel().tolist(), second.ravel().tolist(), strict=True))
    # Same partition of pixels: a bijection between the two epochs' ids.
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
    mappings.add(tuple(sorted(pairs)))
  assert any(a != b for mapping in mappings for a, b in mapping), 'ids never changed'


def test_too_many_segments_keep_the_largest_and_are_counted(shapes_config, shapes_data_dir):
  config = _no_augmentation(shapes_config())
  builder = shapes.make_builder('shapes/tiny', shapes_data_dir)
  # The example with the most segments, alone in the split.
  counts = {i: len(np.unique(e['instance'])) for i, e in _raw_by_id(builder, 'train').items()}
  position = [int(e['image_id']) for e in tfds.as_numpy(builder.as_dataset(split='train'))]
  index = max(range(len(position)), key=lambda k: counts[position[k]])
  raw = _raw_by_id(builder, f'train[{index}:{index + 1}]')[position[index]]
  config.data.train_split = f'train[{index}:{index + 1}]'
  config.train.batch_size = 2
  config.model.max_instances = 4
  num_segments = counts[position[index]]
  assert num_segments > 3

  iterator = get_task(config).train_iterator(process_index=0, process_count=1)
  batch = next(iterator)
  mask_instance = raw['instance'][1::2, 1::2, 0]  # nearest 64 -> 32.
  ids, sizes = np.unique(mask_instance, return_counts=True)
  largest = ids[np.argsort(-sizes, kind='stable')[:3]]
  kept = np.isin(mask_instance, largest)
  for label in batch['label']:
    assert (label[kept, 1] > 0).all() and (label[kept, 1] < 4).all()
    assert (label[~kept] == 0).all()
    np.testing.assert_array_equal(label[kept, 0], raw['semantic'][1::2, 1::2, 0][kept])
  assert iterator.dropped_segments >= 2 * (len(ids) - 3)


def test_crowd_is_void_or_a_segment_for_training_and_kept_in_orig_label(shapes_config):
  config = _no_augmentation(shapes_config())
  base = registry.get_source(config)

  def sky_is_crowd(example, raw):
    del raw
    return {**example, 'crowd': tf.cast(tf.equal(example['semantic'], SKY), tf.int32)}

  source = _with_decode(base, sky_is_crowd)
  batch = next(get_task(config).train_iterator(process_index=0, process_count=1, source=source))
  assert not (batch['label'][..., 0] == SKY).any()
  assert (batch['label'][..., 0] == 0).any()
  assert ((batch['label'][..., 0] == 0) == (batch['label'][..., 1] == 0)).all()

  raw = _raw_by_id(base.builder, 'test')
  evaluation = next(
    eval_pipeline.make_eval_iterator(config, process_index=0, process_count=1, source=source)
  )
  for label, orig, image_id in zip(
    evaluation['label'], evaluation['orig_label'], evaluation['image_id'], strict=True
  ):
    expected = raw[int(image_id)]
    np.testing.assert_array_equal(orig[..., 0], expected['semantic'][..., 0])
    np.testing.assert_array_equal(orig[..., 1], expected['instance'][..., 0])
    np.testing.assert_array_equal(orig[..., 2], expected['semantic'][..., 0] == SKY)
    assert not (label[..., 0] == SKY).any()

  # config.data.train_crowd='segment': the crowd is trained as a segment of its class.
  config.data.train_crowd = 'segment'
  batch = next(get_task(config).train_iterator(process_index=0, process_count=1, source=source))
  sky = batch['label'][..., 0] == SKY
  assert sky.any() and (batch['label'][..., 1][sky] > 0).all()
  for label in batch['label']:  # one id per image for its sky
    assert len(np.unique(label[..., 1][label[..., 0] == SKY])) <= 1


def test_eval_batches_pad_and_stay_in_lockstep(shapes_config, shapes_data_dir):
  config = shapes_config()
  config.eval.num_examples = 10
  builder = shapes.make_builder('shapes/tiny', shapes_data_dir)
  raw = _raw_by_id(builder, 'test')
  per_process = []
  for index in range(2):
    iterator = eval_pipeline.make_eval_iterator(config, process_index=index, process_count=2)
    batches = list(iterator)
    assert len(batches) == iterator.num_batches == 2  # ceil(10 / 8) on every process.
    valid_ids = []
    for batch in batches:
      assert batch['image'].shape == (4, 64, 64, 3) and batch['label'].shape == (4, 32, 32, 2)
      assert batch['orig_label'].shape == (4, 64, 64, 3) and batch['valid'].dtype == bool
      assert batch['image_id'].dtype == np.int64 and batch['orig_size'].dtype == np.int32
      for k in range(4):
        if not batch['valid'][k]:
          assert batch['image_id'][k] == -1 and not batch['orig_label'][k].any()
          continue
        valid_ids.append(int(batch['image_id'][k]))
        expected = raw[int(batch['image_id'][k])]
        orig = np.stack(
          [expected['semantic'][..., 0], expected['instance'][..., 0], np.zeros((64, 64))], -1
        )
        np.testing.assert_array_equal(batch['orig_label'][k], orig)
        np.testing.assert_array_equal(batch['label'][k], orig[1::2, 1::2, :2])
        np.testing.assert_array_equal(batch['orig_size'][k], [64, 64])
        np.testing.assert_array_equal(batch['unpadded_size'][k], [64, 64])
        np.testing.assert_allclose(batch['image'][k], expected['image'] / 255.0, atol=1e-5)
    per_process.append(valid_ids)
  assert [len(ids) for ids in per_process] == [5, 5]
  assert not set(per_process[0]) & set(per_process[1])
  assert set(per_process[0]) | set(per_process[1]) == set(_image_ids(builder, 'test[:10]'))


def test_eval_rejects_images_larger_than_eval_orig_size(shapes_config):
  config = shapes_config()
  config.data.eval_orig_size = (32, 48)
  with pytest.raises(ValueError, match=r'Image \d+: original size 64x64 exceeds .*32x48'):
    next(eval_pipeline.make_eval_iterator(config, process_index=0, process_count=1))


def test_error_examples_are_skipped_in_training_and_raise_in_eval(shapes_config):
  config = _no_augmentation(shapes_config())
  base = registry.get_source(config)

  def break_some(example, raw):
    broken = tf.equal(raw['image_id'] % 4, 1)
    message = tf.strings.format('corrupt image: img_{}.png', raw['image_id'])
    return {
      **example,
      'error': tf.where(broken, message, ''),
      # Broken examples carry white pixels so a test can see they never reach a batch.
      'image': tf.where(
        broken, tf.fill(tf.shape(example['image']), tf.constant(255, tf.uint8)), example['image']
      ),
    }

  source = _with_decode(base, break_some)
  iterator = get_task(config).train_iterator(process_index=0, process_count=1, source=source)
  for batch in itertools.islice(iterator, 4):
    assert not (batch['image'] == 1.0).all(axis=(1, 2, 3)).any()
  assert iterator.skipped > 0
  with pytest.raises(ValueError, match=r'corrupt image: img_\d+\.png'):
    for _ in eval_pipeline.make_eval_iterator(
      config, process_index=0, process_count=1, source=source
    ):
      pass


def test_deferred_decoding_equals_tfds_decoding(shapes_config):
  for arg in ('', 'video'):
    source = registry.get_source(shapes_config(arg))
    instruction, _ = splits.process_read_instruction(source.builder, 'test', 0, 1)
    deferred, finish = pipeline.read(source, instruction, None)
    full = source.builder.as_dataset(split=instruction).map(source.decode)
    pairs = zip(tfds.as_numpy(deferred.map(finish)), tfds.as_numpy(full), strict=True)
    for ours, theirs in pairs:
      assert ours.keys() == theirs.keys()
      for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key])


def test_video_train_batches_condition_on_earlier_frames(shapes_config):
  config = _no_augmentation(shapes_config('video'))
  config.train.batch_size = 8
  config.diffusion.frames_dropout = 0.0
  batches = list(
    itertools.islice(get_task(config).train_iterator(process_index=0, process_count=1), 2)
  )
  for batch in batches:
    assert batch['cond_label'].shape == (8, 32, 32, 4) and batch['cond_label'].dtype == np.int32
    assert batch['label'].shape == (8, 32, 32, 2) and batch['image'].shape == (8, 64, 64, 3)
    for label, cond in zip(batch['label'], batch['cond_label'], strict=True):
      for frame in range(2):  # every frame has sky or ground: never all zero without dropout.
        assert cond[..., 2 * frame].all() and cond[..., 2 * frame + 1].all()
      # One permutation per window: an id names the same object (same class) in every frame.
      for previous in (cond[..., 0:2], cond[..., 2:4]):
        for track in np.intersect1d(np.unique(label[..., 1]), np.unique(previous[..., 1])):
          assert set(np.unique(label[label[..., 1] == track, 0])) == set(
            np.unique(previous[previous[..., 1] == track, 0])
          )

  for dropout, expect in ((1.0, 'all'), (0.5, 'some')):
    config.diffusion.frames_dropout = dropout
    batch = next(get_task(config).train_iterator(process_index=0, process_count=1))
    empty = ~batch['cond_label'].reshape(8, -1, 2, 2).any(axis=(1, 3))  # (B, frames)
    if expect == 'all':
      assert empty.all()
    else:
      assert 0 < empty.sum() < empty.size


def test_video_eval_yields_whole_clips_per_process(shapes_config, shapes_data_dir):
  config = shapes_config('video')
  config.eval.batch_size = 4  # 2 clips per process: the 3 test clips + 1 padding clip.
  builder = shapes.make_builder('shapes_video/tiny', shapes_data_dir)
  raw = {int(e['video_id']): e for e in tfds.as_numpy(builder.as_dataset(split='test'))}
  seen, batches = [], []
  for index in range(2):
    clips = eval_pipeline.make_video_eval_iterator(config, process_index=index, process_count=2)
    batches.append(list(clips))
    for batch in batches[-1]:
      assert batch['frames'].shape == (2, 8, 64, 64, 3) and batch['frames'].dtype == np.float32
      assert batch['label'].shape == (2, 8, 32, 32, 2)
      for i in np.flatnonzero(batch['valid']):
        expected = raw[int(batch['video_id'][i])]
        orig = batch['orig_label'][i]
        np.testing.assert_array_equal(orig[..., 0], expected['semantic'][..., 0])
        np.testing.assert_array_equal(orig[..., 1], expected['instance'][..., 0])
        np.testing.assert_array_equal(batch['orig_size'][i], [64, 64])
        np.testing.assert_array_equal(batch['unpadded_size'][i], [64, 64])
        assert batch['num_frames'][i] == 8
        assert batch['video_name'][i].decode() == f'clip_{int(batch["video_id"][i]):05d}'
        # The mask-size ground truth numbers the clip's segments 1..K, the same in every frame.
        ids = np.unique(batch['label'][i][..., 1])
        np.testing.assert_array_equal(ids[ids > 0], np.arange(1, len(ids[ids > 0]) + 1))
        seen.append(int(batch['video_id'][i]))
  # Lockstep: both processes yield one batch; the clip that is missing on one is padding.
  assert [len(b) for b in batches] == [1, 1]
  assert sum((~b['valid']).sum() for bs in batches for b in bs) == 1
  assert sorted(seen) == sorted(raw)


def test_bad_configs_give_clear_errors(shapes_config):
  config = shapes_config()
  with pytest.raises(ValueError, match='config.train.batch_size = 8'):
    get_task(config).train_iterator(process_index=0, process_count=3)
  with pytest.raises(ValueError, match='config.eval.batch_size'):
    eval_pipeline.make_eval_iterator(config, process_index=0, process_count=3)


def test_the_task_must_fit_the_dataset(shapes_config):
  video = shapes_config('video')
  video.task = 'panoptic'
  with pytest.raises(ValueError, match="config.task='panoptic' does not fit.*a video dataset"):
    task_registry.get_task(video).check_source(registry.get_source(video), training=False)
  image = shapes_config()
  image.task = 'video_panoptic'
  with pytest.raises(ValueError, match="config.task='video_panoptic' does not fit.*an image"):
    task_registry.get_task(image).check_source(registry.get_source(image), training=False)


def test_num_classes_is_the_datasets_or_taken_from_it(shapes_config):
  """One rule for the class count: exactly the dataset's categories + void (fewer breaks the
  labels, more wastes an output per pixel), or 0 to take it from the dataset; the config the
  caller holds is never changed."""
  config = shapes_config()
  info = pipeline.dataset_info(config)
  for wrong in (4, 8):
    config.model.num_classes = wrong
    with pytest.raises(ValueError, match=f'config.model.num_classes={wrong}.*=6'):
      data_facts.apply(config, info.categories, 'dataset shapes')
  config.model.num_classes = 0
  resolved = data_facts.apply(config, info.categories, 'dataset shapes')
  assert resolved.model.num_classes == info.num_classes == 6 and config.model.num_classes == 0
  assert data_facts.apply(resolved, info.categories, 'dataset shapes') is resolved


def test_video_eval_reads_only_the_first_frames_it_scores(shapes_config, shapes_data_dir):
  """config.eval.max_frames_per_sequence = N: clips stop after their first N frames (nothing
  later is decoded or sampled); score_all_frames_too reads them whole."""
  config = shapes_config('video')
  first = int(np.random.default_rng().integers(1, 8))
  print('first', first)
  config.eval.max_frames_per_sequence = first
  builder = shapes.make_builder('shapes_video/tiny', shapes_data_dir)
  raw = {int(e['video_id']): e for e in tfds.as_numpy(builder.as_dataset(split='test'))}
  (batch,) = eval_pipeline.make_video_eval_iterator(config, process_index=0, process_count=1)
  assert batch['frames'].shape[1] == first and batch['label'].shape[1] == first
  for i in np.flatnonzero(batch['valid']):
    assert batch['num_frames'][i] == first
    expected = raw[int(batch['video_id'][i])]
    np.testing.assert_array_equal(
      batch['orig_label'][i][..., 1], expected['instance'][:first, ..., 0]
    )
  config.eval.score_all_frames_too = True
  (batch,) = eval_pipeline.make_video_eval_iterator(config, process_index=0, process_count=1)
  assert batch['frames'].shape[1] == 8 and set(batch['num_frames'][batch['valid']]) == {8}
