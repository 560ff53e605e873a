"""Panoptic colour pictures: shapes, void, distinct instances, determinism, overlay."""

import json
import os

import numpy as np
import pytest

from pix2seq_d.tasks import pictures

CATEGORIES_JSON = os.path.join(
  os.path.dirname(__file__), 'data', 'coco_panoptic_sample', 'panoptic_coco_categories.json'
)


@pytest.fixture
def rng():
  seed = int(np.random.SeedSequence().entropy % 2**32)
  print('seed', seed)
  return np.random.default_rng(seed)


@pytest.fixture(params=['coco_colors', 'no_colors'])
def categories(request):
  with open(CATEGORIES_JSON) as f:
    categories = json.load(f)
  if request.param == 'no_colors':
    categories = [{k: v for k, v in c.items() if k != 'color'} for c in categories]
  return categories


def test_shapes_dtypes_void_black_and_batches(rng, categories):
  shape = (3, int(rng.integers(4, 20)), int(rng.integers(4, 20)))
  semantic = rng.integers(0, len(categories) + 1, size=shape)
  instance = rng.integers(0, 5, size=shape)
  picture = pictures.colorize_panoptic(semantic, instance, categories)
  assert picture.dtype == np.uint8 and picture.shape == shape + (3,)
  void = (semantic == 0) | (instance == 0)
  assert (picture[void] == 0).all()
  assert (picture[~void].max(axis=-1) > 0).all()  # Only void is black.
  # The batch is the images one by one, and the same call gives the same picture.
  for b in range(shape[0]):
    np.testing.assert_array_equal(
      pictures.colorize_panoptic(semantic[b], instance[b], categories), picture[b]
    )
  np.testing.assert_array_equal(pictures.colorize_panoptic(semantic, instance, categories), picture)


def test_category_colours_come_from_the_categories(rng, categories):
  stuff = [s for s, c in enumerate(categories, start=1) if not c['isthing']]
  s = int(rng.choice(stuff))
  picture = pictures.colorize_panoptic(np.full((2, 2), s), np.array([[1, 2], [3, 4]]), categories)
  # Stuff is not shaded: every instance has the category colour.
  assert (picture == picture[0, 0]).all()
  if 'color' in categories[s - 1]:
    np.testing.assert_array_equal(picture[0, 0], categories[s - 1]['color'])
  # Without 'color', different categories still get different colours.
  colors = pictures.category_colors(categories)
  assert colors.shape == (len(categories) + 1, 3) and (colors[0] == 0).all()
  if 'color' not in categories[0]:
    assert len({tuple(c) for c in colors[1:]}) == len(categories)


def test_two_instances_of_one_thing_class_get_different_colours(rng, categories):
  things = [s for s, c in enumerate(categories, start=1) if c['isthing']]
  for _ in range(20):
    s = int(rng.choice(things))
    first, second = rng.choice(np.arange(1, 256), size=2, replace=False)
    picture = pictures.colorize_panoptic(
      np.full((1, 2), s), np.array([[first, second]]), categories
    )
    assert not np.array_equal(picture[0, 0], picture[0, 1]), (s, first, second)
  # Every instance id 1..255 of one class is distinct.
  s = int(rng.choice(things))
  row = pictures.colorize_panoptic(np.full((1, 255), s), np.arange(1, 256)[None], categories)
  assert len({tuple(c) for c in row[0]}) == 255


def test_semantic_values_past_the_categories_are_drawn(categories):
  picture = pictures.colorize_panoptic(
    np.array([[len(categories) + 5]]), np.array([[1]]), categories
  )
  assert picture.max() > 0


def test_overlay(rng):
  shape = (2, 5, 6, 3)
  image = rng.random(shape)
  colored = rng.integers(0, 256, size=shape).astype(np.uint8)
  blended = pictures.overlay(image, colored, alpha=0.25)
  assert blended.dtype == np.uint8 and blended.shape == shape
  np.testing.assert_allclose(blended, 0.75 * image * 255 + 0.25 * colored, atol=0.5 + 1e-9)
  # uint8 images give the same as their float version; alpha 0 and 1 give the inputs.
  image_uint8 = np.round(image * 255).astype(np.uint8)
  np.testing.assert_array_equal(pictures.overlay(image_uint8, colored, 0.0), image_uint8)
  np.testing.assert_array_equal(pictures.overlay(image_uint8, colored, 1.0), colored)
  grey = pictures.overlay(image[..., :1], colored, 0.5)
  assert grey.shape == shape
  with pytest.raises(ValueError):
    pictures.overlay(image, colored, alpha=1.5)
