"""Masks a user hands the image task: read and checked before sampling, given segments chosen per
image and pasted exactly at the original resolution, --mode=predict's config.predict.given."""

import json

import numpy as np
import pytest
from PIL import Image

from configs import shapes
from pix2seq_d.formats import coco_panoptic
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
    ids, segments = coco_panoptic.segments_from_semantic_instance(semantic, instance, CATEGORIES)
    annotations.append((image_id, stem, ids, segments))
  return coco_panoptic.write_panoptic_predictions(str(folder), annotations, CATEGORIES)


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
  """An input of fine boundaries (off the 4x coarser mask grid) that dropped one object and split
  another: the refined mask (on the grid, other ids) has both objects whole and its boundary a
  cell away from the input's. The result keeps the input's boundary pixel for pixel, takes the
  refined dropped object (its class, an id of its own) and joins the split object under one of
  the input's ids."""
  num_classes, max_instances, scale, cells = 6, 16, 4, 10
  size = cells * scale
  truth_sem = np.ones((size, size), np.int32)
  truth_inst = np.ones((size, size), np.int32)
  border = int(rng.integers(5 * scale + 1, 6 * scale - 1))  # a row off the grid
  truth_sem[border:], truth_inst[border:] = 2, 2
  left = int(rng.integers(0, 2))
  dropped = (slice(0, 2 * scale), slice(left * scale, (left + 2) * scale))
  split = (slice(0, 2 * scale), slice(6 * scale, 9 * scale))
  truth_sem[dropped], truth_inst[dropped] = 4, 3
  truth_sem[split], truth_inst[split] = 5, 4
  semantic, instance = truth_sem.copy(), truth_inst.copy()
  semantic[dropped], instance[dropped] = 1, 1
  instance[: 2 * scale, 6 * scale + 9 : 9 * scale] = 5  # the split's right third, off the grid
  source = mask_inputs.MaskInput(semantic, instance, 'input.png')
  to_grid = lambda x: x[scale // 2 :: scale, scale // 2 :: scale]  # nearest, half-pixel centres
  refined_sem, refined_inst = to_grid(truth_sem), to_grid(truth_inst)
  refined_sem[5:], refined_inst[5:] = 2, 2  # the refined boundary on the grid line above
  renumber = np.array([0, 7, 5, 11, 9])
  refined = np.stack([refined_sem, renumber[refined_inst]], -1)
  source_cells = np.stack([to_grid(semantic), to_grid(instance)], -1)
  table = mask_inputs.refined_ids_table(refined, source_cells, num_classes, max_instances, 0.5)
  assert (table[[7, 5, 9]] == [1, 2, 4]).all() and table[11] >= max_instances  # the added one
  full = lambda x: np.repeat(np.repeat(x, scale, 0), scale, 1)
  kept = mask_inputs.input_kept(table[refined[..., 1]], source_cells[..., 1], instance, full)
  is_thing = np.array([False, False, False, True, True, True])
  out_sem, out_inst = mask_inputs.keep_agreeing(
    full(refined[..., 0]), full(refined[..., 1]), source, kept, table, is_thing
  )
  np.testing.assert_array_equal(out_sem, truth_sem)  # the input's boundary row, both objects
  assert (out_inst[truth_inst == 1] == 1).all() and (out_inst[truth_inst == 2] == 2).all()
  assert (out_inst[split] == 4).all()  # split in the input, whole again
  added = np.unique(out_inst[dropped])
  assert len(added) == 1 and added[0] not in (0, 1, 2, 4, 5)
