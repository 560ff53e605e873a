"""The video task: post-processing of clips, object maps for DAVIS J&F, the evaluation loop
compiling once per length bucket, ground-truth conditioning through the config, and its sampler
under the shipped remat policies (beside the image task's)."""

import json

import jax
import numpy as np
import pytest

from configs import shapes
from pix2seq_d.data import shapes as shapes_data
from pix2seq_d.evaluation import davis_evaluator
from pix2seq_d.formats import davis_png
from pix2seq_d.loops import evaluate
from pix2seq_d.loops import state as state_lib
from pix2seq_d.parallel import sharding
from pix2seq_d.tasks import postprocess, registry

IS_THING = np.array([False, True, True, True, False, False])  # void, 3 things, sky, ground


def _seed() -> int:
  seed = int(np.random.SeedSequence().entropy % 2**31)
  print('seed', seed)
  return seed


def test_objects_are_non_stuff_instances_numbered_by_id_or_size():
  semantic = np.array([[[4, 4, 1, 1, 0, 2, 2, 2]]])  # sky, circle x2, void, square x3
  instance = np.array([[[1, 1, 7, 7, 9, 3, 3, 3]]])
  # Ground truth order: by instance id (3 -> 1, 7 -> 2, 9 -> 3: class 0 with an id is an object,
  # as DAVIS's are); the sky (stuff) is background.
  np.testing.assert_array_equal(
    davis_png.object_ids(semantic, instance, IS_THING, by='id'),
    [[[0, 0, 2, 2, 3, 1, 1, 1]]],
  )
  # Predictions: largest first, at most `limit`.
  np.testing.assert_array_equal(
    davis_png.object_ids(semantic, instance, IS_THING, by='size', limit=2),
    [[[0, 0, 2, 2, 0, 1, 1, 1]]],
  )


def test_clip_vote_gives_each_track_one_class_and_drops_small_tracks():
  semantic = np.array([[[1, 1, 2, 0]], [[1, 2, 2, 0]]])
  instance = np.array([[[5, 5, 5, 6]], [[5, 5, 5, 6]]])
  new_semantic, new_instance = postprocess.majority_vote(
    semantic, instance, num_classes=6, max_instances=16, min_pixels=3, class_zero_is_void=False
  )
  # Track 5: 3 votes for class 2, 3 for class 1 -> the first maximum (class 1) in every frame;
  # track 6 has 2 pixels < 3 -> void.
  np.testing.assert_array_equal(new_semantic, [[[1, 1, 1, 0]], [[1, 1, 1, 0]]])
  np.testing.assert_array_equal(new_instance, [[[5, 5, 5, 0]], [[5, 5, 5, 0]]])


def test_ground_truth_objects_keep_void_and_id_consistency_counts_switches():
  orig = np.zeros((3, 2, 4, 3), np.int32)
  orig[..., 0] = 1  # circles
  orig[:, :, :2, 1] = 4  # object A, left
  orig[:, :, 2:, 1] = 8  # object B, right
  orig[:, 0, 0, 2] = 1  # one crowd (void) pixel per frame
  gt = davis_evaluator.gt_object_ids(orig, IS_THING)
  assert gt[0, 0, 0] == davis_png.VOID_ID and gt[0, 1, 0] == 1 and gt[0, 1, 3] == 2
  pred = np.where(gt == davis_png.VOID_ID, 0, gt)
  assert davis_evaluator.id_consistency(gt, pred) == (2, 2)
  switched = pred.copy()
  switched[2][switched[2] == 2] = 3  # B changes its id in the last frame
  assert davis_evaluator.id_consistency(gt, switched) == (1, 2)


def test_indexed_png_round_trip(tmp_path):
  rng = np.random.default_rng(_seed())
  ids = rng.integers(0, 21, size=(7, 9))
  path = str(tmp_path / 'seq' / '00000.png')
  davis_png.write_indexed_png(path, ids)
  np.testing.assert_array_equal(davis_png.read_indexed_png(path), ids)
  with pytest.raises(ValueError, match='0..255'):
    davis_png.write_indexed_png(path, ids + 300)


def _video_config():
  config = shapes.get_config('tiny')
  config.task = 'video_panoptic'
  config.eval.metrics = ('davis_jf',)
  config.diffusion.steps = 2
  config.diffusion.steps_later_frames = 1
  config.eval.video_length_bucket = 4
  config.eval.batch_size = 2
  config.eval.min_pixels = 0
  return config


def _predictor(config):
  mesh = sharding.make_mesh(config.mesh)
  state, state_shardings, _, eval_graphdef, _ = state_lib.build_train_state(config, mesh)
  predict_fn = state_lib.jit_predict(
    registry.get_task(config),
    eval_graphdef,
    state_shardings.ema_params,
    state_shardings.ema_model_state,
    mesh,
  )
  return predict_fn, state, mesh


def _clip_batch(rng, lengths, config, height=40, width=48):
  """An eval batch as make_video_eval_iterator yields it, with clips of `lengths` frames."""
  image_h, image_w = config.model.image_size
  mask_h, mask_w = config.model.mask_size
  longest = max(lengths)
  batch_size = len(lengths)
  label = rng.integers(0, 4, size=(batch_size, longest, mask_h, mask_w, 2)).astype(np.int32)
  orig = np.zeros((batch_size, longest, height, width, 3), np.int32)
  orig[..., 0] = 1
  orig[..., 1] = rng.integers(0, 4, size=orig.shape[:-1])
  return {
    'frames': rng.uniform(size=(batch_size, longest, image_h, image_w, 3)).astype(np.float32),
    'label': label,
    'orig_label': orig,
    'orig_size': np.array([[height, width]] * batch_size, np.int32),
    'unpadded_size': np.array([[image_h, image_w]] * batch_size, np.int32),
    'num_frames': np.array(lengths, np.int32),
    'video_id': np.arange(batch_size),
    'video_name': np.array([f'v{n}'.encode() for n in lengths], object),
    'valid': np.ones(batch_size, bool),
  }


@pytest.mark.slow
def test_eval_loop_compiles_once_for_videos_of_different_lengths(tmp_path):
  rng = np.random.default_rng(_seed())
  config = _video_config()
  predict_fn, state, mesh = _predictor(config)
  compiled = predict_fn.__wrapped__._cache_size  # programs the jitted sampler holds
  run = lambda batches, step: evaluate.evaluate(
    config,
    task=registry.get_task(config),
    predict_fn=predict_fn,
    params=state.ema_params,
    model_state=state.ema_model_state,
    mesh=mesh,
    categories=shapes_data.CATEGORIES,
    eval_iterator=batches,
    step=step,
    workdir=str(tmp_path),
  )
  record = run([_clip_batch(rng, [3, 2], config), _clip_batch(rng, [4, 1], config)], 7)
  # Clips of 3, 2, 4 and 1 frames: one bucket of 4, so the sampler compiled once.
  assert compiled() == 1
  run([_clip_batch(rng, [6, 1], config)], 8)
  assert compiled() == 2  # 6 frames: the bucket of 8
  run([_clip_batch(rng, [2, 4], config)], 8)
  assert compiled() == 2
  assert record['num_videos'] == 4
  results = json.loads((tmp_path / 'eval_results.json').read_text())
  assert results['step'] == 8 and 0.0 <= results['J&F-Mean'] <= 1.0
  assert {'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall', 'F-Decay'} <= set(results)
  assert set(results['davis_jf']['per_sequence']) == {
    f'v{n}_{k}' for n in (2, 4) for k in (1, 2, 3)
  }


@pytest.mark.slow
def test_gt_conditioning_from_the_config_uses_the_given_masks():
  seed = _seed()
  rng = np.random.default_rng(seed)
  config = _video_config()
  config.eval.use_gt_cond_frames = True
  predict_fn, state, mesh = _predictor(config)
  frames = rng.uniform(size=(2, 4, 32, 32, 3)).astype(np.float32)
  gt = rng.integers(0, 6, size=(2, 4, 16, 16, 2)).astype(np.int32)
  key = jax.random.key(seed)
  run = lambda f, g: np.asarray(
    predict_fn(state.ema_params, state.ema_model_state, {'frames': f, 'gt_cond': g}, key)
  )
  out = run(frames, gt)
  other = gt.copy()
  other[:, 0] = 0
  # Frame 1 is conditioned on frame 0's given mask: other masks, another frame 1; frame 0 (on
  # zeros) is the same.
  changed = run(frames, other)
  np.testing.assert_array_equal(changed[:, 0], out[:, 0])
  assert not np.array_equal(changed[:, 1], out[:, 1])
  # Not on the model's own frame 0: another frame 0 image leaves frame 1 as it was.
  other_frames = frames.copy()
  other_frames[:, 0] = rng.uniform(size=other_frames[:, 0].shape)
  np.testing.assert_array_equal(run(other_frames, gt)[:, 1:], out[:, 1:])
  with pytest.raises(ValueError, match='pass the ground-truth ids'):
    registry.get_task(config).sample(None, None, None, {'frames': frames}, key)


@pytest.mark.slow
@pytest.mark.parametrize('task', ['panoptic', 'video_panoptic'])
def test_sampling_runs_under_the_shipped_remat_policies(task):
  """COCO and DAVIS train with rematerialised parts; their samplers (inside lax.scan) must run,
  and give what the same weights give without remat."""
  seed = _seed()
  key = jax.random.key(seed)
  outputs = []
  for policy in ('nothing_saveable', 'none'):
    config = _video_config()
    config.task = task
    config.eval.metrics = registry.TASKS[task].metrics
    for part in config.model.remat:
      config.model.remat[part] = policy
    predict_fn, state, _ = _predictor(config)
    shape = (2, 3, 32, 32, 3) if task == 'video_panoptic' else (2, 32, 32, 3)
    images = np.random.default_rng(seed).uniform(size=shape).astype(np.float32)
    inputs = {'frames': images} if task == 'video_panoptic' else {'image': images}
    outputs.append(np.asarray(predict_fn(state.ema_params, state.ema_model_state, inputs, key)))
  np.testing.assert_array_equal(outputs[0], outputs[1])


def _first_frames_of(batch, first):
  """The eval batch the pipeline yields with config.eval.max_frames_per_sequence = `first`."""
  cut = dict(batch)
  for key in ('frames', 'label', 'orig_label'):
    cut[key] = batch[key][:, :first]
  cut['num_frames'] = np.minimum(batch['num_frames'], first)
  return cut


def test_examples_hold_the_first_frames_and_with_both_protocols_every_frame():
  """With config.eval.max_frames_per_sequence = N an example is its clip's first N frames,
  post-processed as the clip of N frames the truncated input gives; score_all_frames_too adds
  every frame, post-processed as the whole clip."""
  rng = np.random.default_rng(_seed())
  config = _video_config()
  config.eval.metrics = ('stq',)
  first = int(rng.integers(2, 4))
  batch = _clip_batch(rng, [first + 3, 1], config)
  mask_h, mask_w = config.model.mask_size
  pred = rng.integers(0, 4, size=(2, first + 3, mask_h, mask_w, 2)).astype(np.int32)
  pred[..., 0] = rng.integers(0, 6, size=pred.shape[:-1])  # classes, things and stuff

  def examples(max_frames, all_frames_too, clips):
    config.eval.max_frames_per_sequence = max_frames
    config.eval.score_all_frames_too = all_frames_too
    return list(registry.get_task(config).eval_examples(clips, pred, shapes_data.CATEGORIES))

  whole = examples(0, False, batch)
  truncated_input = examples(first, False, _first_frames_of(batch, first))
  both = examples(first, True, batch)
  for k, example in enumerate(both):
    length = int(batch['num_frames'][k])
    scored = min(length, first)
    assert example.prediction.semantic.shape == (scored, 40, 48)
    np.testing.assert_array_equal(example.ground_truth, batch['orig_label'][k, :scored])
    for ours, theirs in zip(example.prediction, truncated_input[k].prediction, strict=True):
      np.testing.assert_array_equal(ours, theirs)
    gt_all, pred_all = example.all_frames
    np.testing.assert_array_equal(gt_all, batch['orig_label'][k, :length])
    for ours, theirs in zip(pred_all, whole[k].prediction, strict=True):
      np.testing.assert_array_equal(ours, theirs)
    assert truncated_input[k].all_frames is None and whole[k].all_frames is None


def test_examples_keep_each_pixels_class_or_vote_one_per_track_as_the_config_says():
  """config.eval.one_class_per_track=False (the authors' KITTI-STEP setting): every pixel keeps
  the class it was predicted (at the original size); True: each track has one class."""
  rng = np.random.default_rng(_seed())
  config = _video_config()
  config.eval.metrics = ('stq',)
  config.eval.min_pixels = 0
  batch = _clip_batch(rng, [3], config)
  mask_h, mask_w = config.model.mask_size
  pred = rng.integers(1, 4, size=(1, 3, mask_h, mask_w, 2)).astype(np.int32)
  pred[..., 0] = rng.integers(1, 6, size=pred.shape[:-1])  # classes, things and stuff
  image_size = tuple(config.model.image_size)
  predicted = np.stack(
    [postprocess.to_original_size(f, image_size, image_size, (40, 48)) for f in pred[0]]
  )[..., 0]
  for one_class_per_track in (False, True):
    config.eval.one_class_per_track = one_class_per_track
    task = registry.get_task(config)
    (example,) = task.eval_examples(batch, pred, shapes_data.CATEGORIES)
    semantic, instance = example.prediction
    if one_class_per_track:
      assert not (semantic == predicted).all()
      for track in np.unique(instance[instance > 0]):
        assert len(np.unique(semantic[instance == track])) == 1
    else:
      np.testing.assert_array_equal(semantic, predicted)
