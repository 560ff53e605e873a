"""Tests of the DAVIS 2017 sources (davis.py) on a tiny synthetic folder in the official layout.

The folder holds two videos of a few frames: JPEG frames and palette PNG annotations whose pixels
are object ids (with DAVIS's palette, so the PNG colours differ from the ids) and a void border.
"""

import os

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from pix2seq_d.config import defaults as config_defaults
from pix2seq_d.data import davis, eval_pipeline

RESOLUTION = '480p'
ANNOTATIONS = 'Annotations_unsupervised'
HEIGHT, WIDTH = 24, 32
VOID_ID = 255
# video -> its objects' ids; 'train' holds the first, 'val' the second.
VIDEOS = {'bear': (1,), 'dogs-jump': (1, 2, 3)}
NUM_FRAMES = 3


def davis_palette() -> list[int]:
  """Returns DAVIS's PNG palette: colour k from the bits of k (as in the official PNGs)."""
  palette = []
  for k in range(256):
    color = [0, 0, 0]
    label = k
    for shift in range(7, -1, -1):
      for channel in range(3):
        color[channel] |= ((label >> channel) & 1) << shift
      label >>= 3
    palette += color
  return palette


def object_ids(objects: tuple[int, ...], frame: int) -> np.ndarray:
  """Returns (H, W) uint8 object ids: one moving vertical band per object and a void border."""
  ids = np.zeros((HEIGHT, WIDTH), np.uint8)
  for k, object_id in enumerate(objects):
    left = 2 + 8 * k + frame
    ids[4:20, left : left + 5] = object_id
  ids[:, -1] = VOID_ID
  return ids


def frame_pixels(frame: int) -> np.ndarray:
  """Returns a smooth (H, W, 3) uint8 frame that survives JPEG compression nearly unchanged."""
  y, x = np.mgrid[:HEIGHT, :WIDTH]
  return np.stack([4 * y + frame, 4 * x, np.full_like(x, 128)], axis=-1).astype(np.uint8)


def write_davis(root) -> None:
  """Writes the official layout: JPEGImages, Annotations_unsupervised, ImageSets/2017."""
  for video, objects in VIDEOS.items():
    frame_dir = root / 'JPEGImages' / RESOLUTION / video
    annotation_dir = root / ANNOTATIONS / RESOLUTION / video
    frame_dir.mkdir(parents=True)
    annotation_dir.mkdir(parents=True)
    for frame in range(NUM_FRAMES):
      PIL.Image.fromarray(frame_pixels(frame)).save(frame_dir / f'{frame:05d}.jpg', quality=95)
      annotation = PIL.Image.frombytes('P', (WIDTH, HEIGHT), object_ids(objects, frame).tobytes())
      annotation.putpalette(davis_palette())
      annotation.save(annotation_dir / f'{frame:05d}.png')
  image_sets = root / 'ImageSets' / '2017'
  image_sets.mkdir(parents=True)
  train_video, val_video = VIDEOS
  (image_sets / 'train.txt').write_text(f'{train_video}\n')
  (image_sets / 'val.txt').write_text(f'{val_video}\n')


def davis_config(root, data_dir):
  """Returns a config reading the DAVIS folder `root` ('' = TFDS davis)."""
  config = config_defaults.get_base_config()
  config.data.name = 'davis'
  config.data.davis_root = str(root)
  config.data.train_split = 'train'
  config.data.eval_split = 'val'
  config.data.data_dir = str(data_dir)
  config.model.num_classes = 2  # void + DAVIS's one category, 'object'
  return config


def decoded_videos(source, split: str) -> dict[int, dict]:
  dataset = source.builder.as_dataset(split=split, decoders=source.decoders).map(source.decode)
  return {int(ex['video_id']): ex for ex in tfds.as_numpy(dataset)}


@pytest.fixture
def davis_root(tmp_path):
  root = tmp_path / 'DAVIS'
  write_davis(root)
  return root


def test_folder_videos_give_object_maps(tmp_path, davis_root):
  source = davis.make_source(davis_config(davis_root, tmp_path / 'tfds'))
  assert source.clips and source.categories == davis.CATEGORIES
  assert [c['isthing'] for c in source.categories] == [1]
  video_ids = {}
  for split, (video, objects) in zip(('train', 'val'), VIDEOS.items(), strict=True):
    (example,) = decoded_videos(source, split).values()
    video_ids[video] = int(example['video_id'])
    assert example['error'] == b''
    assert example['video_name'].decode() == video
    assert example['frames'].shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    for key in ('semantic', 'instance', 'crowd'):
      assert example[key].shape == (NUM_FRAMES, HEIGHT, WIDTH) and example[key].dtype == np.int32
    for frame in range(NUM_FRAMES):
      ids = object_ids(objects, frame).astype(np.int32)
      is_object = (ids > 0) & (ids != VOID_ID)
      # The authors' DAVIS labels: semantic channel 0, the objects in the instance channel.
      np.testing.assert_array_equal(example['semantic'][frame], np.zeros_like(ids))
      np.testing.assert_array_equal(example['instance'][frame], np.where(is_object, ids, 0))
      np.testing.assert_array_equal(example['crowd'][frame], (ids == VOID_ID).astype(np.int32))
      difference = np.abs(example['frames'][frame].astype(int) - frame_pixels(frame))
      assert difference.mean() < 2  # JPEG round trip of a smooth image.
  # Ids follow the sorted videos of the root, the same in every split.
  assert video_ids == {name: k for k, name in enumerate(sorted(VIDEOS))}


def test_missing_root_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match='no_davis_here'):
    davis.make_source(davis_config(tmp_path / 'no_davis_here', tmp_path / 'tfds'))


@pytest.mark.parametrize(
  'relative_path',
  [f'JPEGImages/{RESOLUTION}', f'{ANNOTATIONS}/{RESOLUTION}', 'ImageSets/2017/val.txt'],
)
def test_missing_folder_or_split_file_names_it(tmp_path, davis_root, relative_path):
  path = davis_root / relative_path
  if path.is_dir():
    os.rename(path, path.with_name('moved_away'))
  else:
    path.unlink()
  with pytest.raises(FileNotFoundError) as error:
    davis.make_source(davis_config(davis_root, tmp_path / 'tfds'))
  assert f'missing {path}' in str(error.value) or f'missing the split file {path}' in str(
    error.value
  )
  assert 'ImageSets/2017/<split>.txt' in str(error.value)


def test_a_video_name_outside_the_frames_folder_is_refused(tmp_path, davis_root):
  split_file = davis_root / 'ImageSets' / '2017' / 'val.txt'
  split_file.write_text(split_file.read_text() + '\n../../outside\n')
  with pytest.raises(ValueError) as error:
    davis.make_source(davis_config(davis_root, tmp_path / 'tfds'))
  assert f"{split_file} line 3: '../../outside' points outside" in str(error.value)


def test_a_changed_frame_is_prepared_again(tmp_path, davis_root):
  config = davis_config(davis_root, tmp_path / 'tfds')
  first = davis.make_builder(config).builder_config.name
  frame = davis_root / 'JPEGImages' / RESOLUTION / list(VIDEOS)[1] / '00001.jpg'
  frame.write_bytes(frame.read_bytes() + b'\0')
  assert davis.make_builder(config).builder_config.name != first


def test_corrupt_frame_and_missing_annotation_are_recorded(tmp_path, davis_root):
  val_video = list(VIDEOS)[1]
  frame_path = davis_root / 'JPEGImages' / RESOLUTION / val_video / '00001.jpg'
  frame_path.write_bytes(b'not a jpeg')
  annotation_path = davis_root / ANNOTATIONS / RESOLUTION / val_video / '00002.png'
  annotation_path.unlink()
  source = davis.make_source(davis_config(davis_root, tmp_path / 'tfds'))
  (example,) = decoded_videos(source, 'val').values()
  error = example['error'].decode()
  assert str(frame_path) in error and str(annotation_path) in error
  # Placeholders keep the video's shape.
  assert example['frames'].shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
  assert not example['frames'][1].any() and not example['instance'][2].any()
  (train_example,) = decoded_videos(source, 'train').values()
  assert train_example['error'] == b''


def test_unprepared_tfds_davis_says_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    davis.make_source(davis_config('', tmp_path))
  message = str(error.value)
  assert str(tmp_path) in message and '--config.data.davis_root' in message
  assert f'tfds build davis/480p --data_dir={tmp_path}' in message


def test_tfds_davis_decode_on_the_builders_own_features(tmp_path, davis_root):
  """decode of TFDS davis on an example serialized by that builder's FeaturesDict."""
  features = tfds.builder('davis/480p', data_dir=str(tmp_path)).info.features
  video, objects = list(VIDEOS.items())[1]
  ids = np.stack([object_ids(objects, frame) for frame in range(NUM_FRAMES)])
  serialized = features.serialize_example(
    {
      'video': {
        'frames': [
          str(davis_root / 'JPEGImages' / RESOLUTION / video / f'{frame:05d}.jpg')
          for frame in range(NUM_FRAMES)
        ],
        # As TFDS davis stores them: the palette indices, (H, W, 1).
        'segmentations': list(ids[..., None]),
      },
      'metadata': {'num_frames': NUM_FRAMES, 'video_name': video},
    }
  )
  example = tfds.as_numpy(
    davis.decode_tfds_example(features.deserialize_example(serialized), void_id=VOID_ID)
  )
  ids = ids.astype(np.int32)
  is_object = (ids > 0) & (ids != VOID_ID)
  assert example['frames'].shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
  np.testing.assert_array_equal(example['semantic'], np.zeros_like(ids))  # the authors': 0.
  np.testing.assert_array_equal(example['instance'], np.where(is_object, ids, 0))
  np.testing.assert_array_equal(example['crowd'], (ids == VOID_ID).astype(np.int32))
  assert example['error'] == b''


def test_video_eval_clips_keep_the_original_maps(tmp_path, davis_root):
  config = davis_config(davis_root, tmp_path / 'tfds')
  config.model.image_size = (32, 64)
  config.model.mask_size = (16, 32)
  config.data.num_parallel_calls = 1  # the test machines share two cores.
  iterator = eval_pipeline.make_video_eval_iterator(config, process_index=0, process_count=1)
  (batch,) = list(iterator)
  assert batch['valid'].tolist() == [True] + [False] * (config.eval.batch_size - 1)
  clip = {key: value[0] for key, value in batch.items()}
  video, objects = list(VIDEOS.items())[1]
  assert clip['video_id'] == sorted(VIDEOS).index(video)
  assert clip['video_name'].decode() == video
  assert clip['frames'].shape == (NUM_FRAMES, 32, 64, 3)
  ids = np.stack([object_ids(objects, frame) for frame in range(NUM_FRAMES)]).astype(np.int32)
  is_object = (ids > 0) & (ids != VOID_ID)
  expected = np.stack(
    [np.zeros_like(ids), np.where(is_object, ids, 0), (ids == VOID_ID).astype(np.int32)],
    axis=-1,
  )
  np.testing.assert_array_equal(clip['orig_label'], expected)


def test_frames_of_another_size_are_recorded_and_rejected_in_eval(tmp_path, davis_root):
  val_video = list(VIDEOS)[1]
  frame_path = davis_root / 'JPEGImages' / RESOLUTION / val_video / '00000.jpg'
  PIL.Image.fromarray(np.zeros((HEIGHT + 8, WIDTH, 3), np.uint8)).save(frame_path)
  config = davis_config(davis_root, tmp_path / 'tfds')
  (example,) = decoded_videos(davis.make_source(config), 'val').values()
  assert 'different sizes' in example['error'].decode()
  assert example['frames'].shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
  config.data.num_parallel_calls = 1
  with pytest.raises(ValueError, match='different sizes'):
    list(eval_pipeline.make_video_eval_iterator(config, process_index=0, process_count=1))


@pytest.mark.slow
def test_video_run_on_davis_scores_like_the_command_on_its_predictions(
  tmp_path, davis_root, jax_cache
):
  """Train + eval on the DAVIS folder (objects in the instance channel, semantic 0): the eval
  loop's J&F equals the DAVIS command's on the predictions the loop wrote, whose palette is
  DAVIS's."""
  import json
  import subprocess
  import sys

  from processes import main_command, process_env, run

  workdir = tmp_path / 'run'
  code, log = run(
    main_command(
      workdir,
      tmp_path / 'tfds',
      '--config.task=video_panoptic',
      '--config.eval.metrics=("davis_jf",)',
      '--config.data.name=davis',
      f'--config.data.davis_root={davis_root}',
      '--config.data.train_split=train',
      '--config.data.eval_split=val',
      '--config.model.num_classes=0',
      '--config.train.num_steps=2',
      '--config.eval.write_predictions=True',
      '--config.eval.min_pixels=0',
    ),
    jax_cache,
  )
  assert code == 0, log[-3000:]
  results = json.loads((workdir / 'eval_results.json').read_text())
  per_sequence = results['davis_jf']['per_sequence']
  assert sorted(per_sequence) == ['dogs-jump_1', 'dogs-jump_2', 'dogs-jump_3']
  predictions = workdir / 'predictions' / 'step_2'
  with PIL.Image.open(predictions / 'dogs-jump' / '00000.png') as image:
    assert image.mode == 'P' and image.getpalette()[: 3 * 256] == davis_palette()
  output = tmp_path / 'davis.json'
  command = [
    sys.executable,
    '-m',
    'pix2seq_d.evaluation.davis',
    f'--davis_root={davis_root}',
    f'--results_dir={predictions}',
    '--set=val',
    f'--output_json={output}',
  ]
  proc = subprocess.run(command, env=process_env(jax_cache), capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  scores = json.loads(output.read_text())
  for key in ('J&F-Mean', 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall', 'F-Decay'):
    assert scores[key] == pytest.approx(results[key], abs=1e-12), key
  assert scores['per_sequence'] == per_sequence
