"""A small folder in the KITTI-STEP layout for tests: moving person and car tracks that enter and
leave, road and sky, a void band and a crowd region, frames of two sizes across sequences."""

import os
import struct
import zlib

import numpy as np
from PIL import Image

ROAD, SKY, PERSON, CAR, VOID = 0, 10, 11, 13, 255


def sequence_maps(rng, frames: int, height: int, width: int):
  """(class, instance) int (T, H, W) maps of one sequence."""
  classes = np.full((frames, height, width), ROAD, np.int64)
  classes[:, : height // 3] = SKY
  classes[:, :, -2:] = VOID
  instance = np.zeros_like(classes)
  tracks = [(PERSON, int(rng.integers(1, 30000))), (CAR, int(rng.integers(1, 30000))), (CAR, 65535)]
  for k, (cls, track) in enumerate(tracks):
    start = int(rng.integers(0, max(1, frames - 1)))  # a track may enter late
    top = height // 3 + 2 + 4 * k
    for t in range(start, frames):
      left = (3 * t + 7 * k) % max(1, width - 10)
      classes[t, top : top + 4, left : left + 6] = cls
      instance[t, top : top + 4, left : left + 6] = track
  classes[:, -3:, :4] = PERSON  # a crowd of people: thing pixels without a track id
  instance[:, -3:, :4] = 0
  return classes, instance


def write_map(path, classes, instance) -> None:
  rgb = np.stack([classes, instance // 256, instance % 256], axis=-1).astype(np.uint8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(rgb, 'RGB').save(path)


def write_png_16_bits(path, rgb) -> None:
  """Writes an (H, W, 3) array of 0..65535 as an RGB PNG with 16 bits per channel.

  Written chunk by chunk (Pillow writes no 16-bit RGB PNG): the signature, IHDR (bit depth 16,
  colour type 2 = RGB), one IDAT of the zlib-compressed rows (filter byte 0, big-endian samples)
  and IEND.
  """
  rgb = np.asarray(rgb)
  height, width, _ = rgb.shape

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

  rows = b''.join(b'\0' + row.tobytes() for row in rgb.astype('>u2'))
  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n')
    f.write(chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 16, 2, 0, 0, 0)))
    f.write(chunk(b'IDAT', zlib.compress(rows)))
    f.write(chunk(b'IEND', b''))


def write_step_folder(root, rng, splits=None):
  """Writes ROOT/images/<split>/<seq>/<k:06d>.png and the panoptic maps; returns
  {split: {seq: (classes, instance)}}."""
  splits = splits or {
    'train': {'0000': (5, 24, 40), '0001': (6, 20, 36)},
    'val': {'0002': (5, 24, 40), '0006': (3, 22, 30)},
  }
  written = {}
  for split, sequences in splits.items():
    written[split] = {}
    for name, (frames, height, width) in sequences.items():
      classes, instance = sequence_maps(rng, frames, height, width)
      written[split][name] = (classes, instance)
      for t in range(frames):
        picture = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        image_path = os.path.join(root, 'images', split, name, f'{t:06d}.png')
        os.makedirs(os.path.dirname(image_path), exist_ok=True)
        Image.fromarray(picture).save(image_path)
        if split != 'test':
          write_map(
            os.path.join(root, 'panoptic_maps', split, name, f'{t:06d}.png'),
            classes[t],
            instance[t],
          )
  return written


def seeded_rng():
  """A generator with a fresh seed, printed so that a failure can be replayed."""
  seed = int(np.random.SeedSequence().entropy % 2**32)
  print('seed', seed)
  return np.random.default_rng(seed)


def step_config(root, data_dir):
  """configs/kitti_step.py:runlocal reading the STEP folder `root` into the TFDS `data_dir`."""
  from configs import kitti_step as kitti_configs

  config = kitti_configs.get_config('runlocal')
  config.data.step_root = str(root)
  config.data.data_dir = str(data_dir)
  config.data.num_parallel_calls = 1
  return config
