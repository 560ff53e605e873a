"""--mode=predict's input handling: names checked before inference, unreadable images named."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pix2seq_d.tasks import predict_inputs


def _save(path, rng, size=(20, 30)):
  Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(path)


def test_inputs_sharing_a_stem_are_refused_before_inference(tmp_path):
  seed = int(np.random.SeedSequence().entropy % 2**32)
  print('seed', seed)
  rng = np.random.default_rng(seed)
  for name in ('a.png', 'a.jpg', 'b.png', 'c.webp', 'C.png'):
    _save(tmp_path / name, rng)
  with pytest.raises(ValueError) as error:
    predict_inputs.list_images(str(tmp_path))
  message = str(error.value)
  assert "'a': ['a.jpg', 'a.png']" in message and 'b.png' not in message
  (tmp_path / 'a.jpg').unlink()
  assert [p.rsplit('/', 1)[1] for p in predict_inputs.list_images(str(tmp_path))] == [
    'C.png',
    'a.png',
    'b.png',
    'c.webp',
  ]


def huge_png_header(width: int = 20_000, height: int = 20_000) -> bytes:
  """A PNG whose header declares width x height RGB pixels (and holds none): Pillow refuses it
  as a decompression bomb when opening it."""
  header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  chunk = lambda kind, data: (
    struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
  )
  return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IEND', b'')


@pytest.mark.parametrize(
  'content', [b'', b'\xff\xd8 truncated', b'\x89PNG\r\n\x1a\n broken', huge_png_header()]
)
def test_unreadable_image_error_names_the_file(tmp_path, content):
  path = tmp_path / 'x.png'
  path.write_bytes(content)
  with pytest.raises(ValueError, match=f'{path}: cannot be read as an image'):
    predict_inputs.load_image(str(path), (32, 32), 0.3)
