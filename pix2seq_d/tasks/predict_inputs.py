"""What --mode=predict reads: images, folders of frames and video files, fitted to the model.

Images (.jpg, .png, ...) are read with Pillow; a video is a folder of frames (in the order of their
sorted names), a folder of such folders, or a video file: GIF through Pillow, other formats
(.mp4, .avi, ...) through OpenCV or imageio when one of them is installed. Each image or frame is
resized to fit config.model.image_size keeping its aspect ratio (bilinear) and padded bottom /
right, as evaluation images are. Every read error is a ValueError naming the file.
"""

import os

import numpy as np
from PIL import Image, ImageSequence

from pix2seq_d.runtime import image_files

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def list_images(input_path: str) -> list[str]:
  """An image file, or the images of a folder (sorted).

  Raises:
    ValueError: two images of the folder share a stem (their outputs would overwrite each other).
    FileNotFoundError: no such file, or a folder without images.
  """
  if not input_path:
    raise ValueError('--mode=predict needs --config.predict.input=IMAGE_OR_FOLDER.')
  if os.path.isdir(input_path):
    paths = sorted(
      os.path.join(input_path, name)
      for name in os.listdir(input_path)
      if name.lower().endswith(IMAGE_SUFFIXES)
    )
    if not paths:
      raise FileNotFoundError(f'config.predict.input={input_path} holds no {IMAGE_SUFFIXES} files.')
    by_stem = {}
    for path in paths:
      by_stem.setdefault(stem(path), []).append(os.path.basename(path))
    clashes = {name: files for name, files in by_stem.items() if len(files) > 1}
    if clashes:
      raise ValueError(
        f'config.predict.input={input_path}: outputs are named by the file stem, and these '
        f'images share one: {clashes}. Rename or move all but one of each.'
      )
    return paths
  if not os.path.isfile(input_path):
    raise FileNotFoundError(f'config.predict.input={input_path} does not exist.')
  return [input_path]


def stem(path: str) -> str:
  """The file name without folder and suffix: what a prediction of the file is named by."""
  return os.path.splitext(os.path.basename(path))[0]


def load_image(path: str, image_size: tuple[int, int], pad_value: float):
  """Reads, resizes to fit `image_size` keeping the aspect ratio (bilinear), pads bottom/right.

  Returns:
    (padded (H, W, 3) float32 in [0, 1], original uint8 image, unpadded (h, w)).
  """
  try:
    with Image.open(path) as img:
      original = np.asarray(img.convert('RGB'))
  except image_files.READ_ERRORS as e:  # Pillow's errors for corrupt files
    raise ValueError(f'{path}: cannot be read as an image ({e}).') from e
  return fit_image(original, image_size, pad_value)


def image_size(path: str) -> tuple[int, int]:
  """(height, width) of an image file, read from its header; ValueError names an unreadable one."""
  try:
    with Image.open(path) as img:
      return img.height, img.width
  except image_files.READ_ERRORS as e:
    raise ValueError(f'{path}: cannot be read as an image ({e}).') from e


def fit_image(original: np.ndarray, image_size: tuple[int, int], pad_value: float):
  """`load_image` for a decoded uint8 (Ho, Wo, 3) image: (padded, original, unpadded)."""
  height, width = original.shape[:2]
  scale = min(image_size[0] / height, image_size[1] / width)
  size = (max(1, round(height * scale)), max(1, round(width * scale)))
  resized = Image.fromarray(original).resize((size[1], size[0]), Image.BILINEAR)
  padded = np.full(image_size + (3,), pad_value, np.float32)
  padded[: size[0], : size[1]] = np.asarray(resized, np.float32) / 255.0
  return padded, original, size


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
  has_frames = any(name.lower().endswith(IMAGE_SUFFIXES) for name in os.listdir(input_path))
  if has_frames:
    name = os.path.basename(os.path.normpath(input_path))
    return {name: list_images(input_path)}
  videos = {}
  for name in sorted(os.listdir(input_path)):
    folder = os.path.join(input_path, name)
    if os.path.isdir(folder) and any(
      f.lower().endswith(IMAGE_SUFFIXES) for f in os.listdir(folder)
    ):
      videos[name] = list_images(folder)
  if not videos:
    raise FileNotFoundError(
      f'config.predict.input={input_path} holds no frames ({IMAGE_SUFFIXES}) and no '
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
    except image_files.READ_ERRORS as e:
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


def load_frames(source: list[str] | str, image_size, pad_value: float):
  """(padded (T, H, W, 3) float32, originals [uint8 (Ho, Wo, 3)], unpadded (h, w))."""
  if isinstance(source, str):
    loaded = [fit_image(f, image_size, pad_value) for f in read_video_file(source)]
    names = [f'{source} frame {k}' for k in range(len(loaded))]
  else:
    loaded = [load_image(path, image_size, pad_value) for path in source]
    names = source
  sizes = {x[1].shape[:2] for x in loaded}
  if len(sizes) > 1:
    first = loaded[0][1].shape[:2]
    odd = next(n for n, x in zip(names, loaded, strict=True) if x[1].shape[:2] != first)
    raise ValueError(f'{odd}: its size differs from the first frame of its video ({first}).')
  return np.stack([x[0] for x in loaded]), [x[1] for x in loaded], loaded[0][2]
