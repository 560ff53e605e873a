"""The file formats of pix2seq_d/formats/: what a writer writes, its reader gives back, and a
reader refuses a file of another kind naming it. (COCO panoptic's segment checks, bbox and
panopticapi agreement are in tests/test_coco_format.py.)"""

import io
import json

import numpy as np
import pytest
from PIL import Image
from step_layout import write_png_16_bits

from pix2seq_d.formats import coco_panoptic, davis_png, step_png


def _rng():
  seed = int(np.random.SeedSequence().entropy % 2**32)
  print('seed', seed)
  return np.random.default_rng(seed)


def _shape(rng):
  return tuple(int(v) for v in rng.integers(3, 40, 2))


# ------------------------------------------------------------------------------ COCO panoptic


def test_coco_panoptic_png_and_json_round_trip(tmp_path):
  rng = _rng()
  shape = _shape(rng)
  segment_ids = rng.choice(np.arange(1, 2**24), size=5, replace=False)
  ids = np.where(rng.uniform(size=shape) < 0.2, 0, rng.choice(segment_ids, size=shape))
  present = [int(v) for v in np.unique(ids) if v]
  segments = [{'id': v, 'category_id': int(rng.integers(1, 4))} for v in present]
  categories = [{'id': k, 'name': f'c{k}', 'isthing': k % 2} for k in (1, 2, 3)]
  json_path = coco_panoptic.write_panoptic_predictions(
    str(tmp_path), [(7, 'frame', ids, segments)], categories
  )
  np.testing.assert_array_equal(
    coco_panoptic.read_panoptic_png(str(tmp_path / 'panoptic' / 'frame.png')), ids
  )
  with open(json_path) as f:
    written = json.load(f)
  assert written['categories'] == categories
  (annotation,) = written['annotations']
  assert annotation['image_id'] == 7 and annotation['file_name'] == 'frame.png'
  assert [(s['id'], s['category_id']) for s in annotation['segments_info']] == [
    (s['id'], s['category_id']) for s in segments
  ]
  assert [s['area'] for s in annotation['segments_info']] == [
    int((ids == v).sum()) for v in present
  ]


def test_coco_panoptic_id_packing_is_one_rule_for_arrays_and_ints():
  rng = _rng()
  rgb = rng.integers(0, 256, (*_shape(rng), 3))
  ids = coco_panoptic.rgb2id(rgb.astype(np.uint8))
  np.testing.assert_array_equal(ids, rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2])
  np.testing.assert_array_equal(coco_panoptic.id2rgb(ids), rgb)
  assert coco_panoptic.pack_id(*(int(v) for v in rgb[0, 0])) == ids[0, 0]


def test_coco_panoptic_reader_refuses_a_file_that_is_no_png_naming_it(tmp_path):
  text = tmp_path / 'notes.png'
  text.write_text('not an image')
  with pytest.raises(coco_panoptic.PanopticFormatError, match=f'{text}: cannot be decoded'):
    coco_panoptic.read_panoptic_png(str(text))


# ------------------------------------------------------------------------------ KITTI-STEP


def _random_step_map(rng, shape):
  classes = rng.integers(0, 19, shape)
  classes[rng.uniform(size=shape) < 0.1] = step_png.VOID
  return classes, rng.integers(0, step_png.INSTANCE_SPAN, shape)


def test_step_png_round_trip_and_bytes(tmp_path):
  rng = _rng()
  classes, instance = _random_step_map(rng, _shape(rng))
  path = tmp_path / 'seq' / '000000.png'  # the writer makes the folder
  step_png.write_step_png(str(path), classes, instance)
  read_classes, read_instance = step_png.read_step_png(str(path))
  np.testing.assert_array_equal(read_classes, classes)
  np.testing.assert_array_equal(read_instance, instance)
  assert read_classes.dtype == read_instance.dtype == np.int32
  # The file is Pillow's PNG of the packed 8-bit RGB map, nothing else (no .partial left over).
  rgb = np.stack([classes, instance // 256, instance % 256], axis=-1).astype(np.uint8)
  expected = io.BytesIO()
  Image.fromarray(rgb, 'RGB').save(expected, format='PNG')
  assert path.read_bytes() == expected.getvalue()
  assert sorted(p.name for p in path.parent.iterdir()) == ['000000.png']


def test_step_png_reader_refuses_16_bits_other_modes_and_other_formats_naming_the_file(tmp_path):
  rng = _rng()
  classes, instance = _random_step_map(rng, _shape(rng))
  # The same values widened to 16 bits per channel: Pillow keeps their (zero) high bytes.
  sixteen = tmp_path / 'sixteen.png'
  write_png_16_bits(sixteen, np.stack([classes, instance // 256, instance % 256], axis=-1))
  with pytest.raises(ValueError, match=f'{sixteen}: .*8 bits per channel.*this file has 16'):
    step_png.read_step_png(str(sixteen))
  grey = tmp_path / 'grey.png'
  Image.fromarray(classes.astype(np.uint8)).save(grey)
  with pytest.raises(ValueError, match=f'{grey}: a STEP panoptic map is RGB .*not L'):
    step_png.read_step_png(str(grey))
  jpeg = tmp_path / 'frame.png'
  Image.fromarray(np.zeros((*classes.shape, 3), np.uint8)).save(jpeg, format='JPEG')
  with pytest.raises(ValueError, match=f'{jpeg}: a STEP panoptic map is a PNG, this file is JPEG'):
    step_png.read_step_png(str(jpeg))
  text = tmp_path / 'text.png'
  text.write_text('not an image')
  with pytest.raises(ValueError, match=f'{text}: cannot be decoded as a PNG'):
    step_png.read_step_png(str(text))
  with pytest.raises(FileNotFoundError, match='missing.png does not exist'):
    step_png.read_step_png(str(tmp_path / 'missing.png'))


def test_step_png_writer_refuses_values_the_format_cannot_hold(tmp_path):
  path = str(tmp_path / 'bad.png')
  with pytest.raises(ValueError, match='bad.png: instance ids must lie in 0..65535'):
    step_png.write_step_png(path, np.zeros((2, 2)), np.full((2, 2), step_png.INSTANCE_SPAN))
  with pytest.raises(ValueError, match='bad.png: classes must lie in 0..255'):
    step_png.write_step_png(path, np.full((2, 2), 256), np.zeros((2, 2)))
  assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------ DAVIS


def test_davis_png_round_trip_with_the_voc_palette(tmp_path):
  rng = _rng()
  ids = rng.integers(0, 21, _shape(rng))
  ids[rng.uniform(size=ids.shape) < 0.1] = davis_png.VOID_ID
  path = tmp_path / 'video' / '00000.png'
  davis_png.write_indexed_png(str(path), ids)
  np.testing.assert_array_equal(davis_png.read_indexed_png(str(path)), ids)
  with Image.open(path) as image:
    assert image.mode == 'P'
    palette = image.getpalette()
  # DAVIS's colours: index 1 dark red, 2 dark green, 3 olive, 255 light grey-ish (224, 224, 192).
  assert palette[3:12] == [128, 0, 0, 0, 128, 0, 128, 128, 0]
  assert palette[3 * 255 : 3 * 256] == [224, 224, 192]
  # A grey PNG holds the same ids.
  grey = tmp_path / 'grey.png'
  Image.fromarray(ids.astype(np.uint8)).save(grey)
  np.testing.assert_array_equal(davis_png.read_indexed_png(str(grey)), ids)


def test_davis_png_reader_refuses_rgb_and_non_png_naming_the_file(tmp_path):
  rgb = tmp_path / 'rgb.png'
  Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(rgb)
  with pytest.raises(ValueError, match=f'{rgb}: a DAVIS object-id map is an indexed .*mode RGB'):
    davis_png.read_indexed_png(str(rgb))
  text = tmp_path / 'text.png'
  text.write_bytes(b'\x89PNG broken')
  with pytest.raises(ValueError, match=f'{text}: cannot be decoded as a PNG'):
    davis_png.read_indexed_png(str(text))
  with pytest.raises(FileNotFoundError, match='missing.png does not exist'):
    davis_png.read_indexed_png(str(tmp_path / 'missing.png'))
  with pytest.raises(ValueError, match='ids must lie in 0..255'):
    davis_png.write_indexed_png(str(tmp_path / 'big.png'), np.full((2, 2), 300))
