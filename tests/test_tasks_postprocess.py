"""Post-processing from mask-size ids to original-size panoptic maps."""

import dataclasses

import numpy as np

from pix2seq_d.formats import coco_panoptic
from pix2seq_d.tasks import postprocess


def test_resize_nearest_integer_factor_repeats():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 9, (5, 7))
  up = postprocess.resize_nearest(x, (10, 21))
  np.testing.assert_array_equal(up, np.repeat(np.repeat(x, 2, 0), 3, 1))
  np.testing.assert_array_equal(postprocess.resize_nearest(up, (5, 7)), x)


def test_majority_vote_min_pixels_and_void():
  semantic = np.array([[1, 1, 2, 3], [1, 2, 2, 3], [0, 0, 0, 4]])
  instance = np.array([[1, 1, 2, 3], [1, 1, 2, 3], [5, 5, 0, 4]])
  sem, inst = postprocess.majority_vote(semantic, instance, 6, 8, min_pixels=2)
  # id 1: classes (1, 1, 1, 2) -> 1; id 2: (2, 2) -> 2; id 3: (3, 3) -> 3;
  # id 4 has 1 pixel -> void; id 5 is mostly void -> void; instance 0 -> void.
  np.testing.assert_array_equal(sem, [[1, 1, 2, 3], [1, 1, 2, 3], [0, 0, 0, 0]])
  np.testing.assert_array_equal(inst, [[1, 1, 2, 3], [1, 1, 2, 3], [0, 0, 0, 0]])


def test_postprocess_crops_padding_and_resizes_to_original():
  rng = np.random.default_rng(1)
  orig = (30, 45)
  # The image was resized by 2/3 to (20, 30) and padded to (32, 32); the mask is (16, 16).
  content = rng.integers(1, 4, (10, 15))
  pred = np.zeros((16, 16, 2), np.int64)
  pred[:10, :15, 0] = content
  pred[:10, :15, 1] = content + 10
  pred[10:, :, :] = (5, 1)  # garbage in the padding must not leak into the output.
  options = postprocess.Options((32, 32), num_classes=6, max_instances=16, min_pixels=0)
  sem, inst = postprocess.postprocess(pred, (20, 30), orig, options)
  assert sem.shape == orig and inst.shape == orig
  expected = postprocess.resize_nearest(content, orig)
  np.testing.assert_array_equal(sem, expected)
  np.testing.assert_array_equal(inst, expected + 10)
  assert 5 not in sem


def test_postprocess_merges_each_stuff_class_into_one_segment():
  semantic = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
  instance = np.array([[3, 4, 5, 6], [3, 4, 5, 6]])
  is_thing = coco_panoptic.is_thing_table([{'isthing': 1}, {'isthing': 0}])
  options = postprocess.Options((2, 4), num_classes=3, max_instances=8, min_pixels=0)
  sem, inst = postprocess.postprocess(
    np.stack([semantic, instance], -1), (2, 4), (2, 4), options, is_thing
  )
  np.testing.assert_array_equal(sem, semantic)
  np.testing.assert_array_equal(inst, [[3, 4, 5, 5], [3, 4, 5, 5]])  # things stay apart.


def test_instance_zero_keeps_its_voted_class_as_the_authors_cityscapes_evaluation():
  """eval.void_instance_zero=False (configs/cityscapes.py): the authors' `majority_vote_postprocess`
  (their tasks/panoptic_segmentation.py) counts (id, class) over every pixel, id 0 included, so
  the id-0 pixels take the argmax class of all of them (ties to the smaller class, as
  tf.argmax), unless fewer than min_pixels; we give that region a fresh id so it is a segment."""
  semantic = np.array([[1, 1, 2, 2, 3], [1, 1, 2, 3, 3], [2, 2, 2, 1, 0]])
  instance = np.array([[4, 4, 0, 0, 0], [4, 4, 0, 0, 0], [0, 0, 0, 0, 0]])
  pred = np.stack([semantic, instance], -1)
  options = postprocess.Options((3, 5), num_classes=4, max_instances=8, min_pixels=2)
  theirs = dataclasses.replace(options, void_instance_zero=False)
  ours = postprocess.postprocess(pred, (3, 5), (3, 5), options)
  # Ours: id 4 takes class 1; the 11 pixels of id 0 become void.
  np.testing.assert_array_equal(ours[0], np.where(instance == 4, 1, 0))
  np.testing.assert_array_equal(ours[1], np.where(instance == 4, 4, 0))
  sem, inst = postprocess.postprocess(pred, (3, 5), (3, 5), theirs)
  # id 0's classes: 2 x6, 3 x3, 1 x1, 0 x1 -> 2 everywhere id 0 was, as one more segment (id 5).
  np.testing.assert_array_equal(sem, np.where(instance == 4, 1, 2))
  np.testing.assert_array_equal(inst, np.where(instance == 4, 4, 5))
  # Too few id-0 pixels, or a void vote: they stay void.
  few = postprocess.postprocess(pred, (3, 5), (3, 5), dataclasses.replace(theirs, min_pixels=12))
  assert (few[0][instance == 0] == 0).all() and (few[1][instance == 0] == 0).all()
  void_vote = np.stack([np.where(instance == 0, 0, semantic), instance], -1)
  voided = postprocess.postprocess(void_vote, (3, 5), (3, 5), theirs)
  assert (voided[0][instance == 0] == 0).all() and (voided[1][instance == 0] == 0).all()


def test_an_id_back_after_its_conditioning_frames_is_a_new_track():
  # Id 3 is in frames 0, 1, missing from 2 and 3, back in 4: with 2 conditioning frames the
  # model cannot have copied it, so frames 4.. are a new track; id 5 misses one frame only.
  present = {3: [0, 1, 4, 5], 5: [0, 2, 3]}
  instance = np.zeros((6, 1, 2), np.int64)
  for column, (track, frames) in enumerate(present.items()):
    instance[frames, 0, column] = track
  split = postprocess.split_tracks(instance, absent_frames=2)
  np.testing.assert_array_equal(split[:, 0, 0], [3, 3, 0, 0, 6, 6])  # 6: above every id
  np.testing.assert_array_equal(split[:, 0, 1], [5, 0, 5, 5, 0, 0])
  np.testing.assert_array_equal(postprocess.split_tracks(instance, absent_frames=0), instance)
  np.testing.assert_array_equal(postprocess.split_tracks(instance, absent_frames=3), instance)


def test_split_tracks_on_random_clips_renames_only_returning_lives():
  seed = int(np.random.SeedSequence().entropy % 2**31)
  print('seed', seed)
  rng = np.random.default_rng(seed)
  instance = rng.integers(0, 6, (12, 3, 3)) * (rng.random((12, 1, 1)) < 0.8)
  gap = int(rng.integers(1, 4))
  split = postprocess.split_tracks(instance, gap)
  assert ((split > 0) == (instance > 0)).all()
  # Within a frame distinct ids stay distinct, and a new id never meets another id's pixels.
  pairs = np.unique(np.stack([instance.ravel(), split.ravel()], -1), axis=0)
  assert len(np.unique(pairs[:, 1])) == len(pairs)
  for old, new in pairs[pairs[:, 0] > 0]:
    frames = np.flatnonzero((split == new).any(axis=(1, 2)))
    # One life: never absent from `gap` frames in a row between its first and last frame.
    assert (np.diff(frames) <= gap).all(), (old, new, frames)
    if new != old:  # a later life starts after a gap of more than `gap` frames
      before = np.flatnonzero((instance[: frames[0]] == old).any(axis=(1, 2)))
      assert len(before) and frames[0] - before[-1] > gap


def test_clip_postprocessing_votes_a_class_per_track_life():
  # Id 2 is a car (class 1) in frames 0-1 and, after 3 frames without it, a person (class 3):
  # split, each life keeps its own class; unsplit, one vote makes it a car throughout.
  semantic = np.array([1, 1, 0, 0, 0, 3])[:, None, None] * np.ones((1, 1, 2), np.int64)
  instance = np.array([2, 2, 0, 0, 0, 2])[:, None, None] * np.ones((1, 1, 2), np.int64)
  pred = np.stack([semantic, instance], -1)
  options = postprocess.Options((1, 2), num_classes=4, max_instances=4, min_pixels=0)
  sem, inst = postprocess.postprocess_clip(pred, (1, 2), (1, 2), options)
  assert sem[5, 0, 0] == 1 and inst[5, 0, 0] == 2
  split = dataclasses.replace(options, new_track_after=2)
  sem, inst = postprocess.postprocess_clip(pred, (1, 2), (1, 2), split)
  np.testing.assert_array_equal(sem[:, 0, 0], [1, 1, 0, 0, 0, 3])
  np.testing.assert_array_equal(inst[:, 0, 0], [2, 2, 0, 0, 0, 3])  # 3: above the clip's ids


def test_bilinear_resize_equals_tf_image_resize():
  """The uncertainty's resize (samples.uncertainty_at) interpolates as tf.image.resize does."""
  import tensorflow as tf

  seed = int(np.random.default_rng().integers(1 << 31))
  print('seed', seed)
  rng = np.random.default_rng(seed)
  for _ in range(4):
    x = rng.random((int(rng.integers(1, 12)), int(rng.integers(1, 12)), 2)).astype(np.float32)
    size = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    want = tf.image.resize(x, size, method='bilinear', antialias=False).numpy()
    np.testing.assert_allclose(postprocess.resize_bilinear(x, size), want, atol=1e-5)
    np.testing.assert_allclose(
      postprocess.resize_bilinear(x[..., 0], size), want[..., 0], atol=1e-5
    )


# A small clip of classes void, car (thing), person (thing), road (stuff): 2 frames of 1 x 4.
# Track 5 is a car in three pixels and a person in one; pixel 2 is road with instance 0, pixel 3 a
# car with instance 0.
_CLIP_IS_THING = np.array([False, True, True, False])
_CLIP_SEMANTIC = np.array([[[1, 1, 3, 1]], [[2, 1, 3, 1]]])
_CLIP_INSTANCE = np.array([[[5, 5, 0, 0]], [[5, 5, 0, 0]]])


def _postprocess_clip(semantic, instance, one_class_per_track, min_pixels=0):
  """The maps `postprocess_clip` gives a clip already at its original size."""
  size = semantic.shape[1:]
  options = postprocess.Options(
    size,
    num_classes=len(_CLIP_IS_THING),
    max_instances=8,
    min_pixels=min_pixels,
    one_class_per_track=one_class_per_track,
  )
  return postprocess.postprocess_clip(
    np.stack([semantic, instance], -1), size, size, options, _CLIP_IS_THING
  )


def test_one_class_per_track_votes_and_voids_instance_zero():
  sem, inst = _postprocess_clip(_CLIP_SEMANTIC, _CLIP_INSTANCE, one_class_per_track=True)
  # Track 5 is a car in both frames (3 votes to 1); road and car with instance 0 become void.
  np.testing.assert_array_equal(sem, [[[1, 1, 0, 0]], [[1, 1, 0, 0]]])
  np.testing.assert_array_equal(inst, [[[5, 5, 0, 0]], [[5, 5, 0, 0]]])


def test_keeping_pixel_classes_keeps_each_pixels_class_and_id():
  sem, inst = _postprocess_clip(_CLIP_SEMANTIC, _CLIP_INSTANCE, one_class_per_track=False)
  np.testing.assert_array_equal(sem, _CLIP_SEMANTIC)  # every pixel's predicted class
  # The car pixels of track 5 keep id 5; its person pixel is another segment, of its own id.
  assert (inst[0, 0, :2] == 5).all() and inst[1, 0, 1] == 5
  person = inst[1, 0, 0]
  assert person > 0 and person != 5 and (inst == person).sum() == 1
  # The road keeps its class as a segment (a nonzero id of its own, the same in both frames).
  road = inst[0, 0, 2]
  assert road > 0 and (inst[:, 0, 2] == road).all() and (inst == road).sum() == 2
  assert road not in (5, person)
  # The car with instance 0 keeps its class and no id, as the authors' maps hold it.
  np.testing.assert_array_equal(inst[:, 0, 3], [0, 0])


def test_keeping_pixel_classes_drops_small_segments_only():
  sem, inst = _postprocess_clip(
    _CLIP_SEMANTIC, _CLIP_INSTANCE, one_class_per_track=False, min_pixels=2
  )
  # The person segment (1 pixel) becomes void; the car track (3) and the road (2) stay.
  np.testing.assert_array_equal(sem, [[[1, 1, 3, 1]], [[0, 1, 3, 1]]])
  assert inst[1, 0, 0] == 0 and (inst[:, 0, :2][sem[:, 0, :2] > 0] == 5).all()


def test_keeping_pixel_classes_scores_the_stq_of_the_raw_maps():
  """Ids renumbered for our outputs change no STQ: the authors score the sampled maps as is."""
  from pix2seq_d.evaluation import stq, stq_evaluator

  seed = int(np.random.default_rng().integers(1 << 31))
  print('seed', seed)
  rng = np.random.default_rng(seed)
  shape = (5, 6, 7)
  semantic = rng.integers(0, len(_CLIP_IS_THING), shape)
  instance = rng.integers(0, 5, shape)
  gt_semantic = rng.integers(0, len(_CLIP_IS_THING), shape)
  gt_instance = np.where(_CLIP_IS_THING[gt_semantic], rng.integers(0, 4, shape), 0)
  ours = _postprocess_clip(semantic, instance, one_class_per_track=False)
  things = np.flatnonzero(_CLIP_IS_THING[1:])

  def score(pred_semantic, pred_instance):
    sequence = stq.SequenceSTQ(len(_CLIP_IS_THING) - 1, things, void=-1)
    gt = stq_evaluator.stq_maps(gt_semantic, gt_instance)
    pred = stq_evaluator.stq_maps(pred_semantic, pred_instance)
    for t in range(shape[0]):
      sequence.add_frame(gt[0][t], gt[1][t], pred[0][t], pred[1][t])
    return sequence.summary()

  want, got = score(semantic, instance), score(*ours)
  assert got['num_tubes'] == want['num_tubes'] and got['confusion'] == want['confusion']
  np.testing.assert_allclose(got['aq_sum'], want['aq_sum'], rtol=1e-12)
