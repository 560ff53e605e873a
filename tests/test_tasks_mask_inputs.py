"""Masks a user hands the image task: read and checked before sampling, given segments chosen per
image and pasted exactly at the original resolution, --mode=predict's config.predict.given."""

import json

import numpy as np
import pytest
from PIL import Image

from configs import shapes
from pix2seq_d.evaluation import coco_format
from pix2seq_d.tasks import mask_inputs, registry

CATEGORIES = [
  {'id': 1, 'name': 'circle', 'isthing': 1},
  {'id': 2, 'name': 'square', 'isthing': 1},
  {'id': 7, 'name': 'sky', 'isthing': 0},
]
IS_THING = np.array([False, True, True, False])


@pytest.fixture
def rng():
  seed = int(np.random.default_rng().integers(1 << 31))
  print('seed', seed)
  return np.random.default_rng(seed)


def _write_file(folder, masks):
  """A COCO panoptic file of {stem: (semantic, instance)} maps (semantic = category index + 1)."""
  annotations = []
  for image_id, (stem, (semantic, instance)) in enumerate(masks.items()):
    ids, segments = coco_format.segments_from_semantic_instance(semantic, instance, CATEGORIES)
    annotations.append((image_id, stem, ids, segments))
  return coco_format.write_panoptic_predictions(str(folder), annotations, CATEGORIES)


def _scene(rng, height, width):
  semantic = np.full((height, width), 3, np.int64)  # sky
  instance = np.ones((height, width), np.int64)
  for k in range(3):
    top, left = rng.integers(0, height - 4), rng.integers(0, width - 4)
    semantic[top : top + 4, left : left + 4] = 1 + k % 2
    instance[top : top + 4, left : left + 4] = 2 + k
  return semantic, instance


def test_a_mask_file_reads_back_with_its_categories_and_new_ids(tmp_path, rng):
  semantic, instance = _scene(rng, 12, 17)
  path = _write_file(tmp_path / 'masks', {'a': (semantic, instance)})
  mask = mask_inputs.read_mask_file(path, CATEGORIES, 16, 'flag', by_stem=True)['a']
  np.testing.assert_array_equal(mask.semantic, semantic)
  # The same segments under ids 1..n.
  pairs = set(zip(instance.ravel().tolist(), mask.instance.ravel().tolist(), strict=True))
  assert len(pairs) == len(np.unique(instance)) and mask.instance.min() >= 1
  with pytest.raises(ValueError, match=r'more than the model\'s 2 instance ids'):
    mask_inputs.read_mask_file(path, CATEGORIES, 3, 'flag')
  data = json.loads(open(path).read())
  data['annotations'][0]['segments_info'][0]['category_id'] = 5
  open(path, 'w').write(json.dumps(data))
  with pytest.raises(ValueError, match='category_id 5, which the model does not know'):
    mask_inputs.read_mask_file(path, CATEGORIES, 16, 'flag')


def test_given_segments_are_chosen_per_image_and_pasted_exactly(rng):
  semantic, instance = _scene(rng, 20, 24)
  label = np.stack([semantic, instance, np.zeros_like(semantic)], axis=-1)
  given = mask_inputs.choose_given(label, 0.5, seed=(3, 7))
  np.testing.assert_array_equal(given[1], mask_inputs.choose_given(label, 0.5, (3, 7))[1])
  segments = len(np.unique(instance))
  assert len(np.unique(given[1][given[1] > 0])) == round(0.5 * segments)
  mask = mask_inputs.MaskInput(*given, 'image 7')
  known = mask.instance > 0
  # A prediction that reuses a given id elsewhere for the same object, and sky elsewhere.
  predicted_semantic = rng.integers(1, 4, semantic.shape)
  predicted_instance = rng.integers(1, 6, semantic.shape)
  out_semantic, out_instance = mask_inputs.paste_given(
    predicted_semantic, predicted_instance, mask, IS_THING
  )
  np.testing.assert_array_equal(out_semantic[known], mask.semantic[known])
  np.testing.assert_array_equal(out_instance[known], mask.instance[known])
  for given_id in np.unique(mask.instance[known]):  # one class per segment
    assert len(np.unique(out_semantic[out_instance == given_id])) == 1


def test_predict_given_is_checked_before_sampling_and_kept_exactly(tmp_path, rng):
  config = shapes.get_config('tiny')
  config.model.num_classes = len(CATEGORIES) + 1
  config.predict.given = ''
  inputs = tmp_path / 'inputs'
  inputs.mkdir()
  Image.fromarray(rng.integers(0, 255, (30, 41, 3), dtype=np.uint8)).save(inputs / 'a.png')
  Image.fromarray(rng.integers(0, 255, (25, 20, 3), dtype=np.uint8)).save(inputs / 'b.png')
  semantic, instance = _scene(rng, 30, 41)
  given_instance = np.where(instance >= 3, instance, 0)  # two of the squares/circles given
  given_semantic = np.where(given_instance > 0, semantic, 0)
  config.predict.given = _write_file(tmp_path / 'given', {'a': (given_semantic, given_instance)})
  task = registry.get_task(config)
  sources = task.predict_sources(str(inputs))
  task.prepare_predict(sources, CATEGORIES)
  loaded = [task.load_predict_input(sources[name]) for name in ('a', 'b')]
  batch = task.predict_inputs(loaded, 2)
  assert batch['given_mask'][0].any() and not batch['given_mask'][1].any()
  plain = np.zeros((16, 16, 2), np.int32)  # a sampler that found nothing
  example = task.predict_example(0, 'a', plain, loaded[0], CATEGORIES, 0)
  known = given_instance > 0
  np.testing.assert_array_equal(example.prediction.semantic[known], given_semantic[known])
  assert example.prediction.semantic.shape == (30, 41)

  # An entry for an image that is not an input, or of another size: named before any sampling.
  config.predict.given = _write_file(tmp_path / 'other', {'c': (given_semantic, given_instance)})
  with pytest.raises(ValueError, match="is of image 'c', which the inputs lack"):
    registry.get_task(config).prepare_predict(sources, CATEGORIES)
  config.predict.given = _write_file(tmp_path / 'size', {'b': (given_semantic, given_instance)})
  with pytest.raises(ValueError, match='is 41x30 but image b is 20x25'):
    registry.get_task(config).prepare_predict(sources, CATEGORIES)


def test_refinement_keeps_the_input_where_the_model_agrees_and_fixes_the_rest(rng):
  """An input of fine boundaries (off the 4x coarser mask grid) that dropped one object: the
  refined mask (on the grid, other ids) has every segment and the object. The result is the
  input, pixel for pixel, where the two agree, and the refined object (its class, an id of its
  own) in the cells where the input dropped it."""
  num_classes, max_instances, scale = 6, 16, 4
  height, width = 8 * scale, 8 * scale
  semantic = np.ones((height, width), np.int32)
  instance = np.ones((height, width), np.int32)
  border = int(rng.integers(3 * scale + 1, 5 * scale - 1))  # a row off the grid
  semantic[border:], instance[border:] = 2, 2
  top, left = int(rng.integers(0, 2)), int(rng.integers(0, 2))
  box = (slice(top * scale, (top + 2) * scale), slice(left * scale, (left + 2) * scale))
  truth_sem, truth_inst = semantic.copy(), instance.copy()
  truth_sem[box], truth_inst[box] = 4, 3
  source = mask_inputs.MaskInput(semantic, instance, 'input.png')  # the object dropped
  to_grid = lambda x: x[scale // 2 :: scale, scale // 2 :: scale]  # nearest, half-pixel centres
  renumber = np.array([0, 7, 5, 11])
  refined = np.stack([to_grid(truth_sem), renumber[to_grid(truth_inst)]], -1)
  agree, to_source = mask_inputs.agreement(
    refined, np.stack([to_grid(semantic), to_grid(instance)], -1), num_classes, max_instances, 0.5
  )
  assert to_source == {7: 1, 5: 2} and agree.sum() == 64 - 4
  full = lambda x: np.repeat(np.repeat(x, scale, 0), scale, 1)
  is_thing = np.array([False, False, False, True, True, True])
  out_sem, out_inst = mask_inputs.keep_agreeing(
    full(refined[..., 0]), full(refined[..., 1]), source, full(agree), to_source, is_thing
  )
  np.testing.assert_array_equal(out_sem, truth_sem)  # the input's boundary row, the object
  inside = np.zeros_like(semantic, bool)
  inside[box] = True
  np.testing.assert_array_equal(out_inst[~inside], instance[~inside])
  assert len(np.unique(out_inst[inside])) == 1 and out_inst[inside][0] not in (0, 1, 2)
