"""COCO panoptic quality over files, and the command-line tool (a faster drop-in for panopticapi):

  python -m pix2seq_d.evaluation.pq --gt_json F --gt_folder D --pred_json F --pred_folder D \
    [--output_json F] [--num_workers N] [--per_class]

`pq_compute` takes panopticapi's arguments and returns its results: the PNGs are read and
accumulated (`pq_accumulator.PQAccumulator`, where PQ is defined) in worker processes. Bad input
(a missing or corrupt file, invalid JSON, a segment the PNG and JSON disagree on, an --output_json
that cannot be written, checked before any PNG is read) is reported as "error: reason" with exit
status 1; predictions for images absent from the ground truth are ignored, with a warning that
counts them.

Pure numpy: no jax, no tensorflow.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import multiprocessing
import os
import sys
import time
from typing import Sequence

import numpy as np

from pix2seq_d.evaluation import base
from pix2seq_d.evaluation.pq_accumulator import PQAccumulator, format_table
from pix2seq_d.formats.coco_panoptic import PanopticFormatError, read_panoptic_png
from pix2seq_d.runtime.json_files import FileFormatError, load_json, require_keys

_log = logging.getLogger(__name__)

_worker_categories: list[dict] | None = None


def _init_worker(categories: list[dict]) -> None:
  global _worker_categories
  _worker_categories = categories


def _evaluate_chunk(args) -> np.ndarray:
  """Reads and evaluates a list of (gt_annotation, pred_annotation); returns the summed state."""
  pairs, gt_folder, pred_folder, categories = args
  accumulator = PQAccumulator(categories if categories is not None else _worker_categories)
  for gt_annotation, pred_annotation in pairs:
    gt_ids = read_panoptic_png(os.path.join(gt_folder, gt_annotation['file_name']))
    pred_ids = read_panoptic_png(os.path.join(pred_folder, pred_annotation['file_name']))
    accumulator.update(
      gt_ids,
      gt_annotation['segments_info'],
      pred_ids,
      pred_annotation['segments_info'],
      image_id=gt_annotation['image_id'],
    )
  return accumulator.state()


def pq_compute(
  gt_json_file: str,
  pred_json_file: str,
  gt_folder: str | None = None,
  pred_folder: str | None = None,
  num_workers: int | None = None,
) -> dict:
  """panopticapi's `pq_compute` (same arguments, same results), faster; see `PQAccumulator`.

  Folders default to the JSON path without '.json'. num_workers: processes reading and evaluating
  PNGs; default: up to one per CPU core, one per 32 images at least, 1 = in this process.
  """
  gt_json = load_json(gt_json_file, 'ground truth', required=('annotations', 'categories'))
  pred_json = load_json(pred_json_file, 'prediction', required=('annotations',))
  if gt_folder is None:
    gt_folder = gt_json_file.replace('.json', '')
  if pred_folder is None:
    pred_folder = pred_json_file.replace('.json', '')
  if not os.path.isdir(gt_folder):
    raise FileNotFoundError(f"Folder {gt_folder} with ground truth segmentations doesn't exist")
  if not os.path.isdir(pred_folder):
    raise FileNotFoundError(f"Folder {pred_folder} with predicted segmentations doesn't exist")
  categories = gt_json['categories']

  annotation_keys = ('image_id', 'file_name', 'segments_info')
  for path, data in ((gt_json_file, gt_json), (pred_json_file, pred_json)):
    for annotation in data['annotations']:
      require_keys(annotation, annotation_keys, f'{path} annotation')
  pred_annotations = {a['image_id']: a for a in pred_json['annotations']}
  pairs = []
  for gt_annotation in gt_json['annotations']:
    image_id = gt_annotation['image_id']
    if image_id not in pred_annotations:
      raise PanopticFormatError(f'no prediction for the image with id: {image_id}')
    pairs.append((gt_annotation, pred_annotations[image_id]))
  gt_image_ids = {a['image_id'] for a in gt_json['annotations']}
  extra = sorted((i for i in pred_annotations if i not in gt_image_ids), key=str)
  if extra:
    _log.warning(
      '%s: %d predictions are for images absent from the ground truth %s and are ignored '
      '(image ids %s%s).',
      pred_json_file,
      len(extra),
      gt_json_file,
      extra[:5],
      ', ...' if len(extra) > 5 else '',
    )
  missing = [
    os.path.join(folder, annotation['file_name'])
    for pair in pairs
    for folder, annotation in zip((gt_folder, pred_folder), pair, strict=True)
    if not os.path.isfile(os.path.join(folder, annotation['file_name']))
  ]
  if missing:
    raise FileNotFoundError(
      f'{len(missing)} panoptic PNGs named in the JSON files do not exist: {missing[:5]}'
    )

  accumulator = PQAccumulator(categories)
  if num_workers is None:
    num_workers = min(os.cpu_count() or 1, max(1, len(pairs) // 32))
  num_workers = max(1, min(num_workers, len(pairs)))
  if num_workers == 1:
    accumulator.merge_state(_evaluate_chunk((pairs, gt_folder, pred_folder, categories)))
  else:
    # Several chunks per worker balance the load; imap keeps the summation order fixed.
    num_chunks = min(len(pairs), 4 * num_workers)
    bounds = np.linspace(0, len(pairs), num_chunks + 1).astype(int)
    chunks = [
      (pairs[start:stop], gt_folder, pred_folder, None)
      for start, stop in itertools.pairwise(bounds)
    ]
    # Workers start from a fork server, never by forking this process: it may have imported JAX
    # (the eval loop), whose threads make a plain fork prone to deadlock.
    context = multiprocessing.get_context('forkserver')
    with context.Pool(num_workers, _init_worker, (categories,)) as pool:
      for state in pool.imap(_evaluate_chunk, chunks):
        accumulator.merge_state(state)
  return accumulator.results()


def main(argv: Sequence[str] | None = None) -> int:
  """CLI; returns the exit status (0 ok, 1 bad input, with the reason on stderr)."""
  parser = argparse.ArgumentParser(
    prog='python -m pix2seq_d.evaluation.pq',
    description='COCO panoptic quality (PQ, SQ, RQ), equal to panopticapi pq_compute.',
  )
  parser.add_argument(
    '--gt_json',
    '--gt_json_file',
    dest='gt_json',
    required=True,
    help='JSON file with ground truth data',
  )
  parser.add_argument(
    '--pred_json',
    '--pred_json_file',
    dest='pred_json',
    required=True,
    help='JSON file with predictions data',
  )
  parser.add_argument(
    '--gt_folder',
    default=None,
    help='folder with ground truth PNGs; default: X if the JSON file is X.json',
  )
  parser.add_argument(
    '--pred_folder',
    default=None,
    help='folder with predicted PNGs; default: X if the JSON file is X.json',
  )
  parser.add_argument('--output_json', default=None, help='where to write the results as JSON')
  parser.add_argument(
    '--num_workers',
    type=int,
    default=None,
    help='processes reading PNGs (default: up to one per core)',
  )
  parser.add_argument('--per_class', action='store_true', help='also print one row per class')
  args = parser.parse_args(argv)

  def score() -> tuple[dict, str]:
    start = time.time()
    results = pq_compute(
      args.gt_json, args.pred_json, args.gt_folder, args.pred_folder, args.num_workers
    )
    categories = load_json(args.gt_json, 'ground truth')['categories'] if args.per_class else None
    table = format_table(results, categories, args.per_class)
    return results, f'{table}\nTime elapsed: {time.time() - start:0.2f} seconds'

  return base.run_command(score, args.output_json, errors=(FileFormatError, FileNotFoundError))


if __name__ == '__main__':
  sys.exit(main())
