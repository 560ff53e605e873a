"""`--mode=predict` for a video model: streaming segmentation of new videos.

  python -m pix2seq_d.main --config=configs/shapes.py:video --workdir=RUN --mode=predict \
      --config.predict.input=FRAMES_OR_VIDEO --config.predict.output=OUT

The input is a folder of frames (images, in the order of their sorted names), a folder of such
folders (one video each, e.g. DAVIS's JPEGImages/480p), or a video file: GIF through Pillow, other
formats (.mp4, .avi, ...) through OpenCV or imageio when one of them is installed. Every video is
streamed through the model like in evaluation (frame t conditioned on the model's own masks of
t-2 and t-1), and for each video <name> (the folder's or file's stem) and frame k this writes:

- OUT/<name>/<k:05d>.png: the objects as a palette PNG (DAVIS results layout; object ids are the
  same in every frame, largest object first), which `python -m pix2seq_d.evaluation.davis` reads;
- OUT/<name>/panoptic/<k:05d>.png + OUT/<name>/panoptic.json: COCO panoptic, the segment id of a
  track the same in every frame;
- OUT/<name>/overlays/<k:05d>.png: the panoptic prediction coloured over the frame.

Each video's files are written into a staging folder and moved into place when all are written.
"""

import os
import shutil
import tempfile

import jax
import numpy as np
from absl import logging
from PIL import Image, ImageSequence

from pix2seq_d import predict, sharding, video_eval_loop
from pix2seq_d.evaluation import coco_format, davis, visualize
from pix2seq_d.models import layers
from pix2seq_d.tasks import panoptic, video

VIDEO_SUFFIXES = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.gif')


def list_videos(input_path: str) -> dict[str, list[str] | str]:
  """{video name: sorted frame paths, or a video file's path} of config.predict.input.

  Raises:
    ValueError: no input given, or two frames of a video share a stem.
    FileNotFoundError: the input does not exist, or a folder holds neither frames nor folders of
      frames.
  """
  if not input_path:
    raise ValueError('--mode=predict needs --config.predict.input=FRAMES_FOLDER_OR_VIDEO.')
  if os.path.isfile(input_path):
    if not input_path.lower().endswith(VIDEO_SUFFIXES):
      raise ValueError(
        f'config.predict.input={input_path}: a video model reads a folder of frames or a video '
        f'file ({", ".join(VIDEO_SUFFIXES)}).'
      )
    return {os.path.splitext(os.path.basename(input_path))[0]: input_path}
  if not os.path.isdir(input_path):
    raise FileNotFoundError(f'config.predict.input={input_path} does not exist.')
  has_frames = any(name.lower().endswith(predict.IMAGE_SUFFIXES) for name in os.listdir(input_path))
  if has_frames:
    name = os.path.basename(os.path.normpath(input_path))
    return {name: predict.list_images(input_path)}
  videos = {}
  for name in sorted(os.listdir(input_path)):
    folder = os.path.join(input_path, name)
    if os.path.isdir(folder) and any(
      f.lower().endswith(predict.IMAGE_SUFFIXES) for f in os.listdir(folder)
    ):
      videos[name] = predict.list_images(folder)
  if not videos:
    raise FileNotFoundError(
      f'config.predict.input={input_path} holds no frames ({predict.IMAGE_SUFFIXES}) and no '
      'folders of frames.'
    )
  return videos


def read_video_file(path: str) -> list[np.ndarray]:
  """The frames of a video file as uint8 (H, W, 3) arrays.

  Raises:
    ValueError: the file cannot be decoded, or no decoder for its format is installed.
  """
  if path.lower().endswith('.gif'):
    try:
      with Image.open(path) as image:
        return [np.asarray(frame.convert('RGB')) for frame in ImageSequence.Iterator(image)]
    except (OSError, SyntaxError, ValueError) as e:
      raise ValueError(f'{path}: cannot be read as a GIF ({e}).') from e
  try:
    import cv2
  except ImportError:
    cv2 = None
  if cv2 is not None:
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
      ok, frame = capture.read()
      if not ok:
        break
      frames.append(frame[..., ::-1].copy())  # BGR -> RGB
    capture.release()
    if not frames:
      raise ValueError(f'{path}: OpenCV decoded no frames from it.')
    return frames
  try:
    import imageio.v3 as iio
  except ImportError:
    raise ValueError(
      f'{path}: no video decoder is installed (pip install opencv-python-headless or imageio); '
      'or extract the frames (ffmpeg -i VIDEO DIR/%05d.png) and predict on the folder.'
    ) from None
  try:
    return [np.asarray(frame)[..., :3] for frame in iio.imiter(path)]
  except Exception as e:  # imageio raises plugin-specific errors
    raise ValueError(f'{path}: cannot be decoded ({e}).') from e


def _load_frames(source: list[str] | str, image_size, pad_value: float):
  """(padded (T, H, W, 3) float32, originals [uint8 (Ho, Wo, 3)], unpadded (h, w))."""
  if isinstance(source, str):
    loaded = [predict.fit_image(f, image_size, pad_value) for f in read_video_file(source)]
    names = [f'frame {k}' for k in range(len(loaded))]
  else:
    loaded = [predict.load_image(path, image_size, pad_value) for path in source]
    names = source
  sizes = {x[1].shape[:2] for x in loaded}
  if len(sizes) > 1:
    first = loaded[0][1].shape[:2]
    odd = next(n for n, x in zip(names, loaded, strict=True) if x[1].shape[:2] != first)
    raise ValueError(f'{odd}: its size differs from the first frame of its video ({first}).')
  return np.stack([x[0] for x in loaded]), [x[1] for x in loaded], loaded[0][2]


def panoptic_frames(semantic, instance, categories):
  """A clip's (semantic, instance) (T, H, W) -> (COCO panoptic ids (T, H, W), per-frame segment
  lists, the classes (T, H, W) they were given).

  The segment id is the instance id, so a track keeps its id in every frame (post-processing
  gave each id one class over the clip). Class 0 with an instance id is an object of a dataset
  whose semantic channel is 0 (DAVIS): it takes the dataset's category when there is only one,
  and is void otherwise.
  """
  semantic = np.asarray(semantic)
  if len(categories) == 1:
    semantic = np.where(instance > 0, np.maximum(semantic, 1), semantic)
  ids = np.where((semantic > 0) & (instance > 0), instance, 0).astype(np.int32)
  segments = []
  for k in range(len(ids)):
    present = np.unique(ids[k][ids[k] > 0])
    classes = [int(semantic[k][ids[k] == i][0]) for i in present]
    segments.append(
      [
        {'id': int(i), 'category_id': int(categories[c - 1]['id'])}
        for i, c in zip(present, classes, strict=True)
      ]
    )
  return ids, segments, semantic


def _write_video(out_dir: str, originals, semantic, instance, objects, categories) -> None:
  staging = tempfile.mkdtemp(prefix='.video-tmp-', dir=os.path.dirname(out_dir) or '.')
  try:
    ids, segments, classes = panoptic_frames(semantic, instance, categories)
    annotations = []
    os.makedirs(os.path.join(staging, 'overlays'))
    for k, original in enumerate(originals):
      stem = f'{k:05d}'
      davis.write_indexed_png(os.path.join(staging, f'{stem}.png'), objects[k])
      annotations.append((k, stem, ids[k], segments[k]))
      coloured = visualize.colorize_panoptic(classes[k], instance[k], categories)
      Image.fromarray(visualize.overlay(original, coloured)).save(
        os.path.join(staging, 'overlays', f'{stem}.png')
      )
    coco_format.write_panoptic_predictions(staging, annotations, categories)
    if os.path.isdir(out_dir):
      shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def run(config, workdir: str) -> str:
  """Predicts every input video; returns the output folder."""
  output = config.predict.output
  if not output:
    raise ValueError('--mode=predict needs --config.predict.output=DIR.')
  if config.eval.use_gt_cond_frames:
    raise ValueError(
      'config.eval.use_gt_cond_frames=True: new videos have no ground truth to condition on.'
    )
  videos = list_videos(config.predict.input)
  predictor = predict.load_predictor(config, workdir)
  m = config.model
  image_size = layers.static_tuple(m.image_size)
  is_thing = panoptic.is_thing_table(predictor.categories)
  os.makedirs(output, exist_ok=True)
  pad_value = float(config.data.image_pad_value)
  names = list(videos)
  for start in range(0, len(names), predictor.batch_size):
    # One video per data-parallel row; a short last group repeats its first video.
    chunk = names[start : start + predictor.batch_size]
    loaded = [_load_frames(videos[name], image_size, pad_value) for name in chunk]
    longest = max(len(frames) for frames, _, _ in loaded)
    length = video_eval_loop.padded_length(longest, config.eval.video_length_bucket)
    rows = loaded + [loaded[0]] * (predictor.batch_size - len(chunk))
    batch = np.full((len(rows), length, *image_size, 3), pad_value, np.float32)
    for row, (frames, _, _) in enumerate(rows):
      batch[row, : len(frames)] = frames
    inputs = sharding.make_global_batch({'frames': batch}, predictor.mesh)
    pred = np.asarray(
      predictor.predict_fn(
        predictor.params,
        predictor.model_state,
        inputs['frames'],
        None,
        jax.random.key(config.seed + start),
      )
    )
    for row, (name, (frames, originals, unpadded)) in enumerate(zip(chunk, loaded, strict=True)):
      semantic, instance = video.postprocess_clip(
        pred[row, : len(frames)],
        image_size,
        unpadded,
        originals[0].shape[:2],
        num_classes=m.num_classes,
        max_instances=m.max_instances,
        min_pixels=config.eval.min_pixels,
      )
      objects = video.object_ids(semantic, instance, is_thing, by='size', limit=davis.MAX_PROPOSALS)
      _write_video(
        os.path.join(output, name), originals, semantic, instance, objects, predictor.categories
      )
      logging.info('Predicted %s: %d frames -> %s', name, len(frames), os.path.join(output, name))
  logging.info(
    'Predicted %d videos with the EMA weights of step %d into %s',
    len(videos),
    predictor.step,
    output,
  )
  return output
