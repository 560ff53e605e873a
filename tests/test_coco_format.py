"""COCO panoptic format: ids <-> colours, all-or-nothing writing, reading back, area and bbox."""

import json
import os

import numpy as np
import pytest
from panopticapi import utils as panopticapi_utils

from pix2seq_d.formats import coco_panoptic

SAMPLE = os.path.join(os.path.dirname(__file__), 'data', 'coco_panoptic_sample')
GT_JSON = os.path.join(SAMPLE, 'annotations', 'panoptic_val2017.json')
GT_FOLDER = os.path.join(SAMPLE, 'annotations', 'panoptic_val2017')


@pytest.fixture
def rng():
  seed = int(np.random.SeedSequence().entropy % 2**32)
  print('seed', seed)
  return np.random.default_rng(seed)


def _random_annotation(rng, image_id):
  """A random (image_id, stem, ids, segments) with random 24-bit ids and some void."""
  shape = tuple(rng.integers(3, 30, size=2))
  num_segments = int(rng.integers(1, 8))
  segment_ids = rng.choice(2**24 - 1, size=num_segments, replace=False) + 1
  ids = rng.choice(np.concatenate([[0], segment_ids]), size=shape).astype(np.int32)
  segments = [
    {'id': int(i), 'category_id': int(rng.integers(1, 200)), 'iscrowd': int(rng.random() < 0.3)}
    for i in np.unique(ids)
    if i
  ]
  return image_id, f'img_{image_id}', ids, segments


def test_rgb2id_id2rgb_round_trip_and_match_panopticapi(rng):
  ids = rng.integers(0, 2**24, size=(7, 9))
  color = coco_panoptic.id2rgb(ids)
  assert color.dtype == np.uint8 and color.shape == (7, 9, 3)
  np.testing.assert_array_equal(coco_panoptic.rgb2id(color), ids)
  np.testing.assert_array_equal(color, panopticapi_utils.id2rgb(ids))
  np.testing.assert_array_equal(coco_panoptic.rgb2id(color), panopticapi_utils.rgb2id(color))
  value = int(ids[0, 0])
  assert coco_panoptic.rgb2id(coco_panoptic.id2rgb(value)) == value
  with pytest.raises(coco_panoptic.PanopticFormatError):
    coco_panoptic.id2rgb(np.array([2**24]))


def _read_panoptic(json_path, folder):
  """[(image_id, ids (H, W) int32, segments_info)] of a written prediction JSON + PNG folder."""
  with open(json_path) as f:
    annotations = json.load(f)['annotations']
  return [
    (
      a['image_id'],
      coco_panoptic.read_panoptic_png(os.path.join(folder, a['file_name'])),
      a['segments_info'],
    )
    for a in annotations
  ]


def test_write_read_round_trip(tmp_path, rng):
  annotations = [_random_annotation(rng, image_id) for image_id in range(5)]
  categories = [{'id': 1, 'name': 'x', 'isthing': 1}]
  json_path = coco_panoptic.write_panoptic_predictions(str(tmp_path), annotations, categories)
  assert json_path == os.path.join(str(tmp_path), 'panoptic.json')
  assert sorted(os.listdir(tmp_path)) == ['panoptic', 'panoptic.json']
  with open(json_path) as f:
    assert json.load(f)['categories'] == categories
  loaded = _read_panoptic(json_path, os.path.join(str(tmp_path), 'panoptic'))
  assert len(loaded) == len(annotations)
  for (image_id, _, ids, segments), (loaded_id, loaded_ids, loaded_segments) in zip(
    annotations, loaded, strict=True
  ):
    assert loaded_id == image_id
    assert loaded_ids.dtype == np.int32
    np.testing.assert_array_equal(loaded_ids, ids)
    assert [(s['id'], s['category_id'], s['iscrowd']) for s in loaded_segments] == [
      (s['id'], s['category_id'], s['iscrowd']) for s in segments
    ]
    for segment in loaded_segments:
      ys, xs = np.nonzero(ids == segment['id'])
      assert segment['area'] == ys.size
      assert segment['bbox'] == [
        xs.min(),
        ys.min(),
        xs.max() - xs.min() + 1,
        ys.max() - ys.min() + 1,
      ]


def test_area_and_bbox_match_the_coco_sample():
  with open(GT_JSON) as f:
    gt_json = json.load(f)
  for annotation in gt_json['annotations']:
    ids = coco_panoptic.read_panoptic_png(os.path.join(GT_FOLDER, annotation['file_name']))
    ours = coco_panoptic.segments_info(ids, annotation['segments_info'])
    for segment, reference in zip(ours, annotation['segments_info'], strict=True):
      assert segment['area'] == reference['area']
      assert segment['bbox'] == reference['bbox']


def test_invalid_map_writes_nothing_and_keeps_previous_output(tmp_path, rng):
  good = [_random_annotation(rng, image_id) for image_id in range(3)]
  coco_panoptic.write_panoptic_predictions(str(tmp_path), good[:1])
  before = {
    name: (tmp_path / name).read_bytes() for name in ('panoptic.json', 'panoptic/img_0.png')
  }
  image_id, stem, ids, segments = good[2]
  # An id in the map without a segment: the third image is invalid.
  bad = (image_id, stem, ids, segments[1:])
  with pytest.raises(coco_panoptic.PanopticFormatError, match=f'image {image_id}.*not in the segm'):
    coco_panoptic.write_panoptic_predictions(str(tmp_path), [good[1], bad])
  assert sorted(os.listdir(tmp_path)) == ['panoptic', 'panoptic.json']  # no staging folder left
  assert os.listdir(tmp_path / 'panoptic') == ['img_0.png']  # img_1 was not moved in
  for name, content in before.items():
    assert (tmp_path / name).read_bytes() == content
  # A segment without pixels, a repeated id, void id 0 as a segment: also refused.
  unused = next(i for i in range(1, 100) if i not in set(ids.ravel().tolist()))
  for segments_bad, message in (
    (segments + [{'id': unused, 'category_id': 1}], 'no pixels'),
    (segments + segments[:1], 'more than once'),
    (segments + [{'id': 0, 'category_id': 1}], 'outside'),
  ):
    with pytest.raises(coco_panoptic.PanopticFormatError, match=message):
      coco_panoptic.write_panoptic_predictions(str(tmp_path), [(image_id, stem, ids, segments_bad)])
  assert os.listdir(tmp_path / 'panoptic') == ['img_0.png']


def test_read_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='missing.png'):
    coco_panoptic.read_panoptic_png(str(tmp_path / 'missing.png'))
  from PIL import Image

  Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / 'gray.png')
  with pytest.raises(coco_panoptic.PanopticFormatError, match='gray.png.*mode L'):
    coco_panoptic.read_panoptic_png(str(tmp_path / 'gray.png'))


@pytest.mark.parametrize('path', ['lookup_table', 'binary_search'])
def test_segment_index_finds_every_pixel(rng, monkeypatch, path):
  if path == 'binary_search':
    monkeypatch.setattr(coco_panoptic, '_TABLE_MAX_SEGMENTS', 0)
  segment_ids = rng.choice(2**24 - 1, size=int(rng.integers(1, 30)), replace=False) + 1
  others = rng.choice(2**24 - 1, size=3, replace=False) + 1
  others = others[~np.isin(others, segment_ids)]
  ids = rng.choice(np.concatenate([[0], segment_ids, others]), size=(17, 23)).astype(np.int32)
  index, unknown = coco_panoptic.segment_index(ids, segment_ids)
  expected = np.full(ids.shape, len(segment_ids))
  for k, segment_id in enumerate(segment_ids):
    expected[ids == segment_id] = k
  np.testing.assert_array_equal(index, expected)
  np.testing.assert_array_equal(unknown, np.unique(ids[np.isin(ids, others)]))
  # The shared lookup table is left clean for the next call.
  index, _ = coco_panoptic.segment_index(ids, segment_ids[:1])
  assert set(np.unique(index).tolist()) <= {0, 1}
