"""DAVIS 2017 unsupervised evaluation on files: indexed-PNG predictions in the official layout.

  python -m pix2seq_d.evaluation.davis --davis_root=DIR --results_dir=DIR [--set=val]
    [--output_json=F]

Reads ImageSets/2017/<set>.txt, Annotations_unsupervised/480p/ and predictions as indexed PNGs
<results_dir>/<sequence>/<frame>.png, scores them as davis_metrics.py defines (equal to the
official davisvideochallenge/davis2017-evaluation), prints the global and per-object tables and
writes {"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay",
"per_sequence": {name: {"J-Mean", "F-Mean"}}}.

Pure numpy, scipy and Pillow.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image

from pix2seq_d.evaluation.davis_metrics import evaluate_sequence, format_table, summarize
from pix2seq_d.runtime.json_files import write_json_atomically


def read_indexed_png(path: str) -> np.ndarray:
  """The indices of a palette (or grey) PNG as int64 (H, W); errors name the file."""
  try:
    with Image.open(path) as image:
      return np.asarray(image).astype(np.int64)
  except FileNotFoundError:
    raise FileNotFoundError(f'{path} does not exist') from None
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f'{path}: cannot be decoded as a PNG ({e})') from None


def _voc_palette() -> list[int]:
  """The DAVIS / PASCAL VOC palette: colour of index i from its bits, spread over R, G, B."""
  palette = []
  for index in range(256):
    r = g = b = 0
    value = index
    for shift in range(7, -1, -1):
      r |= (value & 1) << shift
      g |= ((value >> 1) & 1) << shift
      b |= ((value >> 2) & 1) << shift
      value >>= 3
    palette += [r, g, b]
  return palette


def write_indexed_png(path: str, ids: np.ndarray) -> None:
  """Writes int (H, W) ids in 0..255 as a palette PNG (DAVIS's colours), atomically."""
  ids = np.asarray(ids)
  if ids.size and (ids.min() < 0 or ids.max() > 255):
    raise ValueError(f'{path}: ids must lie in 0..255, got {ids.min()}..{ids.max()}.')
  height, width = ids.shape
  image = Image.frombytes('P', (width, height), np.ascontiguousarray(ids, np.uint8).tobytes())
  image.putpalette(_voc_palette())
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  partial = f'{path}.partial'
  image.save(partial, format='PNG')
  os.replace(partial, path)


def evaluate_folder(
  davis_root: str,
  results_dir: str,
  image_set: str = 'val',
  resolution: str = '480p',
  annotations: str = 'Annotations_unsupervised',
) -> dict:
  """`summarize` over the sequences of ImageSets/2017/<image_set>.txt of a DAVIS root.

  Predictions are indexed PNGs results_dir/<sequence>/<frame>.png, one per annotated frame
  (the frame names of <annotations>/<resolution>/<sequence>/).
  """
  set_file = os.path.join(davis_root, 'ImageSets', '2017', f'{image_set}.txt')
  if not os.path.isfile(set_file):
    raise FileNotFoundError(
      f'{set_file} does not exist: is {davis_root} a DAVIS 2017 root '
      '(JPEGImages/, Annotations_unsupervised/, ImageSets/2017/)?'
    )
  with open(set_file) as f:
    sequences = [line.strip() for line in f if line.strip()]
  per_sequence = {}
  for sequence in sequences:
    folder = os.path.join(davis_root, annotations, resolution, sequence)
    if not os.path.isdir(folder):
      raise FileNotFoundError(f'{folder} does not exist (sequence {sequence} of {set_file}).')
    frames = sorted(name for name in os.listdir(folder) if name.endswith('.png'))
    gt = np.stack([read_indexed_png(os.path.join(folder, name)) for name in frames])
    pred = np.stack(
      [read_indexed_png(os.path.join(results_dir, sequence, name)) for name in frames]
    )
    if pred.shape != gt.shape:
      raise ValueError(
        f'{os.path.join(results_dir, sequence)}: predictions {pred.shape[1:]} '
        f'and annotations {gt.shape[1:]} differ in size.'
      )
    try:
      per_sequence[sequence] = evaluate_sequence(gt, pred)
    except ValueError as e:
      raise ValueError(f'{os.path.join(results_dir, sequence)}: {e}') from None
  return summarize(per_sequence)


def main(argv: Sequence[str] | None = None) -> int:
  """CLI; returns the exit status (0 ok, 1 bad input with the reason on stderr)."""
  parser = argparse.ArgumentParser(
    prog='python -m pix2seq_d.evaluation.davis',
    description='DAVIS 2017 unsupervised J&F, equal to davisvideochallenge/davis2017-evaluation.',
  )
  parser.add_argument('--davis_root', required=True, help='the DAVIS 2017 folder')
  parser.add_argument(
    '--results_dir', required=True, help='indexed PNG predictions, <sequence>/<frame>.png'
  )
  parser.add_argument('--set', default='val', help='ImageSets/2017/<set>.txt')
  parser.add_argument('--resolution', default='480p')
  parser.add_argument('--output_json', default=None, help='where to write the results as JSON')
  args = parser.parse_args(argv)
  try:
    results = evaluate_folder(args.davis_root, args.results_dir, args.set, args.resolution)
  except (FileNotFoundError, ValueError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 1
  print(format_table(results))
  if args.output_json:
    write_json_atomically(args.output_json, results, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
