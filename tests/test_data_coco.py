"""Tests of the COCO panoptic sources (coco.py, coco_folder.py) on the real COCO val2017 sample.

Every test prepares real TFDS datasets into tmp_path data_dirs and reads them through tf.data.
The training rule for crowd regions lives in the pipeline: crowd pixels become void (0, 0) in
training labels, while evaluation labels keep them with the 'crowd' flag (PQ ignores predictions
that fall on crowd regions of their class). The sources therefore keep crowd segments' class and
instance ids and flag them in 'crowd'.
"""

import json
import os
import shutil

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from configs import coco as coco_configs
from pix2seq_d.data import coco, coco_folder, eval_pipeline, pipeline
from pix2seq_d.data.iterator import TooManyBrokenExamplesError
from pix2seq_d.tasks.registry import get_task

SAMPLE_ROOT = os.path.join(os.path.dirname(__file__), 'data', 'coco_panoptic_sample')
SPLIT = 'val2017'


def folder_config(root: str, data_dir: str):
  """Returns the COCO config reading `root`'s val2017 split through coco_folder."""
  config = coco_configs.get_config()
  config.data.name = 'coco_folder'
  config.data.coco_root = str(root)
  config.data.train_split = SPLIT
  config.data.eval_split = SPLIT
  config.data.data_dir = str(data_dir)
  return config


def read_json(root) -> dict:
  with open(os.path.join(root, 'annotations', f'panoptic_{SPLIT}.json')) as f:
    return json.load(f)


def write_json(root, annotation: dict) -> None:
  with open(os.path.join(root, 'annotations', f'panoptic_{SPLIT}.json'), 'w') as f:
    json.dump(annotation, f)


def decoded_examples(source) -> dict[int, dict]:
  """Returns the canonical examples of the split as numpy, keyed by image id."""
  dataset = source.builder.as_dataset(split=SPLIT, decoders=source.decoders).map(source.decode)
  return {int(ex['image_id']): ex for ex in tfds.as_numpy(dataset)}


def copy_sample(tmp_path):
  root = tmp_path / 'coco'
  shutil.copytree(SAMPLE_ROOT, root)
  return root


@pytest.fixture(scope='module')
def sample_source(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  return coco_folder.make_source(folder_config(SAMPLE_ROOT, data_dir))


@pytest.fixture(scope='module')
def sample_examples(sample_source):
  return decoded_examples(sample_source)


def test_segments_match_the_json(sample_source, sample_examples):
  annotation = read_json(SAMPLE_ROOT)
  category_ids = [c['id'] for c in annotation['categories']]
  assert [c['id'] for c in sample_source.categories] == category_ids
  assert [c['isthing'] for c in sample_source.categories] == [
    c['isthing'] for c in annotation['categories']
  ]
  assert sorted(sample_examples) == sorted(image['id'] for image in annotation['images'])
  num_crowd = 0
  for image_annotation in annotation['annotations']:
    example = sample_examples[image_annotation['image_id']]
    image_info = next(i for i in annotation['images'] if i['id'] == image_annotation['image_id'])
    shape = (image_info['height'], image_info['width'])
    assert example['error'] == b''
    assert example['image'].shape == shape + (3,) and example['image'].dtype == np.uint8
    for key in ('semantic', 'instance', 'crowd'):
      assert example[key].shape == shape and example[key].dtype == np.int32
    instance_ids = set()
    for segment in image_annotation['segments_info']:
      pixels = example['instance'] == example['instance'][_first_pixel(example, segment)]
      assert pixels.sum() == segment['area']
      assert np.all(example['semantic'][pixels] == category_ids.index(segment['category_id']) + 1)
      assert np.all(example['crowd'][pixels] == segment['iscrowd'])
      num_crowd += segment['iscrowd']
      instance_ids.add(int(example['instance'][pixels][0]))
    # One distinct instance id per segment, things, stuff and crowd alike.
    assert len(instance_ids) == len(image_annotation['segments_info'])
    assert 0 not in instance_ids
    void = example['instance'] == 0
    assert void.sum() == np.prod(shape) - sum(s['area'] for s in image_annotation['segments_info'])
    assert np.all(example['semantic'][void] == 0) and np.all(example['crowd'][void] == 0)
  assert num_crowd > 0  # the sample has crowd segments, so the crowd check above did something.


def _first_pixel(example, segment) -> tuple[int, int]:
  """Returns a pixel of `segment`, found from the panoptic PNG id via the sample's own PNG."""
  png_path = os.path.join(
    SAMPLE_ROOT, 'annotations', f'panoptic_{SPLIT}', f'{example["image_id"]:012d}.png'
  )
  panoptic = coco.rgb_to_panoptic_id(np.asarray(_read_png(png_path))).numpy()
  ys, xs = np.nonzero(panoptic == segment['id'])
  return ys[0], xs[0]


def _read_png(path):
  with PIL.Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


def test_semantic_labels_follow_the_json_category_order(tmp_path, sample_examples):
  root = copy_sample(tmp_path)
  annotation = read_json(root)
  annotation['categories'] = annotation['categories'][::-1]
  write_json(root, annotation)
  source = coco_folder.make_source(folder_config(root, tmp_path / 'tfds'))
  assert [c['id'] for c in source.categories] == [c['id'] for c in annotation['categories']]
  reordered = decoded_examples(source)
  num_categories = len(annotation['categories'])
  for image_id, example in sample_examples.items():
    labelled = example['semantic'] > 0
    # Reversing the list maps label k + 1 to num_categories - k.
    expected = np.where(labelled, num_categories + 1 - example['semantic'], 0)
    np.testing.assert_array_equal(reordered[image_id]['semantic'], expected)
    np.testing.assert_array_equal(reordered[image_id]['instance'], example['instance'])


def test_two_roots_do_not_share_a_prepared_copy(tmp_path):
  root = copy_sample(tmp_path)
  first = coco_folder.make_builder(folder_config(SAMPLE_ROOT, tmp_path / 'tfds'))
  second = coco_folder.make_builder(folder_config(root, tmp_path / 'tfds'))
  assert first.data_dir != second.data_dir


def test_unprepared_tfds_coco_names_the_data_dir_and_the_command(tmp_path):
  config = coco_configs.get_config()
  config.data.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError) as error:
    coco.make_source(config)
  message = str(error.value)
  assert str(tmp_path) in message
  assert f'python -m pix2seq_d.data.coco --data_dir={tmp_path}' in message
  assert f'tfds build coco/2017_panoptic --data_dir={tmp_path}' in message
  assert '--manual_dir' in message and 'coco_folder' in message


def test_tfds_coco_decode_on_the_builders_own_features(tmp_path):
  """decode of coco/2017_panoptic on examples serialized by that builder's FeaturesDict."""
  features = tfds.builder('coco/2017_panoptic', data_dir=str(tmp_path)).info.features
  annotation = read_json(SAMPLE_ROOT)
  # As the TFDS builder does while generating: the label names follow the JSON category list.
  features['panoptic_objects']['label'].names = [c['name'] for c in annotation['categories']]
  name_of = {c['id']: c['name'] for c in annotation['categories']}
  assert [c['name'] for c in coco.load_coco_categories()] == list(name_of.values())
  for image_annotation in annotation['annotations']:
    image_info = next(i for i in annotation['images'] if i['id'] == image_annotation['image_id'])
    serialized = features.serialize_example(
      {
        'image': os.path.join(SAMPLE_ROOT, SPLIT, image_info['file_name']),
        'image/filename': image_info['file_name'],
        'image/id': image_info['id'],
        'panoptic_image': os.path.join(
          SAMPLE_ROOT, 'annotations', f'panoptic_{SPLIT}', image_annotation['file_name']
        ),
        'panoptic_image/filename': image_annotation['file_name'],
        'panoptic_objects': [
          {
            'id': s['id'],
            'area': s['area'],
            'bbox': tfds.features.BBox(0.0, 0.0, 1.0, 1.0),
            'label': name_of[s['category_id']],
            'is_crowd': bool(s['iscrowd']),
          }
          for s in image_annotation['segments_info']
        ],
      }
    )
    example = tfds.as_numpy(coco.decode_tfds_example(features.deserialize_example(serialized)))
    assert example['error'] == b'' and example['image_id'] == image_info['id']
    category_ids = list(name_of)
    for k, segment in enumerate(image_annotation['segments_info']):
      pixels = example['instance'] == k + 1
      assert pixels.sum() == segment['area']
      assert np.all(example['semantic'][pixels] == category_ids.index(segment['category_id']) + 1)
      assert np.all(example['crowd'][pixels] == segment['iscrowd'])


def test_wrong_coco_root_names_it(tmp_path):
  missing = tmp_path / 'no_such_root'
  with pytest.raises(FileNotFoundError, match='no_such_root') as error:
    coco_folder.make_source(folder_config(missing, tmp_path / 'tfds'))
  assert 'annotations/panoptic_<split>.json' in str(error.value)


def test_empty_coco_root_says_which_flag(tmp_path):
  with pytest.raises(FileNotFoundError, match='--config.data.coco_root'):
    coco_folder.make_source(folder_config('', tmp_path / 'tfds'))


@pytest.mark.parametrize(
  'relative_path',
  [f'annotations/panoptic_{SPLIT}.json', f'annotations/panoptic_{SPLIT}', SPLIT],
)
def test_missing_json_or_folder_names_it(tmp_path, relative_path):
  root = copy_sample(tmp_path)
  path = root / relative_path
  shutil.rmtree(path) if path.is_dir() else path.unlink()
  with pytest.raises(FileNotFoundError) as error:
    coco_folder.make_source(folder_config(root, tmp_path / 'tfds'))
  assert f'missing {path}' in str(error.value)


def test_corrupt_jpeg_is_recorded_in_its_example(tmp_path):
  root = copy_sample(tmp_path)
  annotation = read_json(root)
  broken, intact = annotation['images']
  jpeg_path = root / SPLIT / broken['file_name']
  jpeg_path.write_bytes(b'this is not a JPEG' * 10)
  examples = decoded_examples(coco_folder.make_source(folder_config(root, tmp_path / 'tfds')))
  bad = examples[broken['id']]
  assert str(jpeg_path) in bad['error'].decode() and 'cannot decode' in bad['error'].decode()
  # A placeholder of the annotated size keeps the example's shapes valid.
  assert bad['image'].shape == (broken['height'], broken['width'], 3)
  assert not bad['image'].any()
  assert examples[intact['id']]['error'] == b''


def test_png_segment_missing_from_json_is_recorded(tmp_path):
  root = copy_sample(tmp_path)
  annotation = read_json(root)
  image_annotation = annotation['annotations'][0]
  dropped = image_annotation['segments_info'].pop(0)
  write_json(root, annotation)
  examples = decoded_examples(coco_folder.make_source(folder_config(root, tmp_path / 'tfds')))
  error = examples[image_annotation['image_id']]['error'].decode()
  png_path = root / 'annotations' / f'panoptic_{SPLIT}' / image_annotation['file_name']
  assert str(png_path) in error and str(dropped['id']) in error and 'missing from the JSON' in error
  assert examples[annotation['annotations'][1]['image_id']]['error'] == b''


def test_json_segment_absent_from_png_is_fine(tmp_path, sample_examples):
  root = copy_sample(tmp_path)
  annotation = read_json(root)
  image_annotation = annotation['annotations'][0]
  unused_id = 1 + max(s['id'] for a in annotation['annotations'] for s in a['segments_info'])
  image_annotation['segments_info'].append(
    {'id': unused_id, 'category_id': 1, 'iscrowd': 0, 'area': 0, 'bbox': [0, 0, 0, 0]}
  )
  write_json(root, annotation)
  examples = decoded_examples(coco_folder.make_source(folder_config(root, tmp_path / 'tfds')))
  example = examples[image_annotation['image_id']]
  assert example['error'] == b''
  np.testing.assert_array_equal(
    example['semantic'], sample_examples[image_annotation['image_id']]['semantic']
  )


def test_panoptic_maps_reports_unknown_ids_without_a_stored_error():
  """Decode-time check, used for TFDS coco where the builder did not check the PNG."""
  ids = np.array([[0, 5], [7, 9]], np.int64)
  rgb = np.stack([ids % 256, ids // 256 % 256, ids // 256**2], axis=-1).astype(np.uint8)
  semantic, instance, crowd, error = tfds.as_numpy(
    coco.panoptic_maps(rgb, np.array([5, 7]), np.array([3, 0]), np.array([False, True]), 'x.png')
  )
  np.testing.assert_array_equal(semantic, [[0, 4], [1, 0]])
  np.testing.assert_array_equal(instance, [[0, 1], [2, 0]])
  np.testing.assert_array_equal(crowd, [[0, 0], [1, 0]])
  assert error == b'x.png: PNG segment ids [9] are missing from the JSON segments_info'


def small_folder_config(root, data_dir):
  """Returns folder_config at the runlocal sizes (128x128 images) with batches of 2."""
  config = folder_config(root, data_dir)
  config.model.image_size = (128, 128)
  config.model.mask_size = (64, 64)
  config.train.batch_size = 2
  config.eval.batch_size = 2
  config.data.num_parallel_calls = 1  # the test machines share two cores.
  return config


def test_eval_batches_keep_the_original_maps_untouched(tmp_path, sample_examples):
  config = small_folder_config(SAMPLE_ROOT, tmp_path / 'tfds')
  iterator = eval_pipeline.make_eval_iterator(config, process_index=0, process_count=1)
  batches = list(iterator)
  assert len(batches) == iterator.num_batches == 1
  (batch,) = batches
  assert sorted(batch['image_id'].tolist()) == sorted(sample_examples)
  for k, image_id in enumerate(batch['image_id']):
    example = sample_examples[int(image_id)]
    height, width = example['semantic'].shape
    np.testing.assert_array_equal(batch['orig_size'][k], (height, width))
    expected = np.stack([example['semantic'], example['instance'], example['crowd']], axis=-1)
    np.testing.assert_array_equal(batch['orig_label'][k, :height, :width], expected)
    assert not batch['orig_label'][k, height:].any() and not batch['orig_label'][k, :, width:].any()


def test_corrupt_example_is_skipped_in_training_and_raises_in_eval(tmp_path):
  root = copy_sample(tmp_path)
  broken = read_json(root)['images'][0]
  jpeg_path = root / SPLIT / broken['file_name']
  jpeg_path.write_bytes(b'\xff\xd8 truncated JPEG')
  config = small_folder_config(root, tmp_path / 'tfds')
  config.data.shuffle_buffer = 2
  # One broken image in two: at most 2 in a row (the end of one epoch, the start of the next), so
  # a limit of 3 in a row is never reached, however many batches go by.
  config.data.max_skips_in_a_row = 3

  train = get_task(config).train_iterator(process_index=0, process_count=1)
  for _ in range(12):
    batch = next(train)
    assert batch['image'].shape == (2, 128, 128, 3) and batch['label'].shape == (2, 64, 64, 2)
  assert train.skipped >= 6

  evaluation = eval_pipeline.make_eval_iterator(config, process_index=0, process_count=1)
  with pytest.raises(ValueError, match=str(jpeg_path)):
    list(evaluation)


def test_fixed_image_is_read_again_after_the_error_named_it(tmp_path):
  """The prepared copy is keyed by every file's stamps: fixing the named file takes effect."""
  root = copy_sample(tmp_path)
  broken = read_json(root)['images'][0]
  jpeg_path = root / SPLIT / broken['file_name']
  good = jpeg_path.read_bytes()
  jpeg_path.write_bytes(b'not a JPEG at all')
  config = folder_config(root, tmp_path / 'tfds')
  assert (
    str(jpeg_path)
    in decoded_examples(coco_folder.make_source(config))[broken['id']]['error'].decode()
  )
  jpeg_path.write_bytes(good)  # the user fixes the file the error named
  assert decoded_examples(coco_folder.make_source(config))[broken['id']]['error'] == b''


def _duplicate_id(annotation):
  annotation['images'][1]['id'] = annotation['images'][0]['id']
  return f'image id {annotation["images"][0]["id"]} is listed twice'


def _no_images(annotation):
  annotation['images'] = []
  return 'lists no images: the split would be empty'


def _isthing_yes(annotation):
  annotation['categories'][0]['isthing'] = 'yes'
  return "has isthing 'yes': use 1 (things) or 0 (stuff)"


def _huge_id(annotation):
  annotation['images'][0]['id'] = 2**70
  return f'has id {2**70}: use an integer in 0..2^63-1 or a string'


# damage -> function changing the annotation and returning the expected message fragment
INVALID_JSON = {
  'duplicate_image_id': _duplicate_id,
  'no_images': _no_images,
  'isthing_yes': _isthing_yes,
  'image_id_beyond_int64': _huge_id,
}


@pytest.mark.parametrize(
  'field, file_name',
  [
    ('images', '../../val2017/000000439180.jpg'),
    ('images', '/etc/passwd'),
    ('annotations', '../annotations/x.png'),
  ],
)
def test_file_names_outside_the_folder_are_refused_before_anything_is_read(
  tmp_path, field, file_name
):
  root = copy_sample(tmp_path)
  annotation = read_json(root)
  annotation[field][1]['file_name'] = file_name
  write_json(root, annotation)
  data_dir = tmp_path / 'tfds'
  with pytest.raises(ValueError) as error:
    coco_folder.make_source(folder_config(root, data_dir))
  message = str(error.value)
  assert str(root / 'annotations' / f'panoptic_{SPLIT}.json') in message and file_name in message
  assert 'outside' in message or 'must be a file name relative to' in message
  left = [os.path.join(d, n) for d, dirs, files in os.walk(data_dir) for n in dirs + files]
  assert not left, left


def test_a_file_in_a_subfolder_is_read_and_keys_the_prepared_copy(tmp_path):
  root = copy_sample(tmp_path)
  annotation = read_json(root)
  moved = annotation['images'][0]
  (root / SPLIT / 'sub').mkdir()
  (root / SPLIT / moved['file_name']).rename(root / SPLIT / 'sub' / moved['file_name'])
  moved['file_name'] = f'sub/{moved["file_name"]}'
  write_json(root, annotation)
  config = folder_config(root, tmp_path / 'tfds')
  first = coco_folder.make_builder(config).builder_config.name
  assert decoded_examples(coco_folder.make_source(config))[moved['id']]['error'] == b''
  path = root / SPLIT / moved['file_name']
  path.write_bytes(path.read_bytes() + b'\0')  # a change below the split's folder
  assert coco_folder.make_builder(config).builder_config.name != first


@pytest.mark.parametrize(
  'damage',
  [
    'truncated',
    'no_images_key',
    'segment_without_id',
    'duplicate_image_id',
    'no_images',
    'isthing_yes',
    'image_id_beyond_int64',
  ],
)
def test_invalid_json_names_the_file_and_leaves_no_prepared_folder(tmp_path, damage):
  root = copy_sample(tmp_path)
  json_path = root / 'annotations' / f'panoptic_{SPLIT}.json'
  annotation = read_json(root)
  if damage in INVALID_JSON:
    expected = INVALID_JSON[damage](annotation)
    write_json(root, annotation)
  elif damage == 'truncated':
    json_path.write_text(json.dumps(annotation)[:-20])
    expected = 'not valid JSON'
  elif damage == 'no_images_key':
    del annotation['images']
    write_json(root, annotation)
    expected = "['images']"
  else:
    del annotation['annotations'][1]['segments_info'][0]['id']
    write_json(root, annotation)
    expected = "['id']"
  data_dir = tmp_path / 'tfds'
  with pytest.raises(ValueError) as error:
    coco_folder.make_source(folder_config(root, data_dir))
  assert str(json_path) in str(error.value) and expected in str(error.value)
  left = [os.path.join(d, n) for d, dirs, files in os.walk(data_dir) for n in dirs + files]
  assert not left, left


def test_every_example_broken_stops_training_with_a_clear_error(tmp_path):
  """Before: the filter skipped forever (289k warnings in 4 minutes); now a bounded count."""
  import threading

  root = copy_sample(tmp_path)
  for image in read_json(root)['images']:
    (root / SPLIT / image['file_name']).write_bytes(b'broken')
  config = small_folder_config(root, tmp_path / 'tfds')
  config.data.max_skips_in_a_row = 7
  train = get_task(config).train_iterator(process_index=0, process_count=1)
  outcome = []

  def first_batch():
    try:
      next(train)
      outcome.append('a batch')
    except Exception as e:  # noqa: BLE001 - the test reports whatever ended the wait
      outcome.append(e)

  thread = threading.Thread(target=first_batch, daemon=True)
  thread.start()
  thread.join(timeout=120)
  assert not thread.is_alive(), 'the iterator still skips broken examples after 120 s'
  (error,) = outcome
  assert isinstance(error, TooManyBrokenExamplesError), error
  assert '7 training examples in a row are broken' in str(error)
  assert 'max_skips_in_a_row' in str(error) and 'cannot decode' in str(error)
  assert train.skipped >= 7  # tf.data may have run a few more before the error reached it


def test_images_larger_than_eval_orig_size_stop_at_start(tmp_path):
  config = small_folder_config(SAMPLE_ROOT, tmp_path / 'tfds')
  largest = (
    max(i['height'] for i in read_json(SAMPLE_ROOT)['images']),
    max(i['width'] for i in read_json(SAMPLE_ROOT)['images']),
  )
  config.data.eval_orig_size = (64, 64)
  with pytest.raises(ValueError) as error:
    pipeline.dataset_info(config)
  message = str(error.value)
  assert 'config.data.eval_orig_size=(64, 64)' in message
  assert f'{largest[0]}x{largest[1]}' in message and f'eval_orig_size="{largest}"' in message
  config.data.eval_orig_size = largest
  assert pipeline.dataset_info(config).num_eval == 2
