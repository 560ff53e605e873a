"""Panoptic quality (PQ, SQ, RQ) exactly as cocodataset/panopticapi `pq_compute` defines it.

Per image: the (gt segment, predicted segment) intersections are counted once over the pixels (ids
0 are void); a pair matches when both have the same category, the gt segment is not crowd and
IoU > 0.5 (strictly), with union = |p| + |g| - |p & g| - |p & void|. Unmatched non-crowd gt
segments are false negatives. An unmatched prediction is ignored when more than half of it lies in
void plus the crowd region of its category, else it is a false positive. tp, fp, fn and the sum of
matched IoUs are summed per category over the dataset; PQ, SQ and RQ are averaged over the
categories with tp + fp + fn > 0, for All, Things and Stuff (by 'isthing').

Faithful to panopticapi in its details: the gt 'area' field of the JSON (when present) is used as
|g|; gt ids of the map that have no segment are neither void nor matched; when an image holds
several crowd segments of one category, only the last one listed is used for ignoring predictions;
a category with tp = 0 and fp + fn > 0 counts in the averages with PQ = SQ = RQ = 0.
Stricter than panopticapi (it would silently misbehave or crash): segment id 0 and repeated segment
ids are refused, gt segments with unknown categories are refused, and with no category to average
over the results are 0 with n = 0 instead of a ZeroDivisionError.

The accumulator takes id maps and segment lists in memory (the eval loop feeds it predictions);
pq.py runs it over COCO panoptic JSON + PNG folders and is the command-line tool.

Pure numpy: no jax, no tensorflow.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pix2seq_d.formats.coco_panoptic import (
  MAX_SEGMENT_ID,
  PanopticFormatError,
  check_segment_ids,
  segment_index,
)
from pix2seq_d.runtime.json_files import require_keys

VOID = 0
OFFSET = 256 * 256 * 256  # panopticapi's key: gt_id * OFFSET + pred_id.

# Columns of the accumulator state.
TP, FP, FN, IOU = 0, 1, 2, 3

_GROUPS = (('All', None), ('Things', True), ('Stuff', False))


class PQAccumulator:
  """Accumulates per-category tp, fp, fn and IoU sums over images; see the module docstring."""

  def __init__(self, categories: Sequence[dict]):
    """Args: categories: panopticapi style dicts {'id', 'name', 'isthing', ...}."""
    self.categories = [dict(category) for category in categories]
    self._row = {}
    for row, category in enumerate(self.categories):
      if 'id' not in category or 'isthing' not in category:
        raise ValueError(f'category {category} needs an "id" and an "isthing" field')
      category_id = int(category['id'])
      if category_id in self._row:
        raise ValueError(f'category id {category_id} occurs more than once')
      self._row[category_id] = row
    self._state = np.zeros((len(self.categories), 4), np.float64)

  def state(self) -> np.ndarray:
    """(num_categories, 4) float64 [tp, fp, fn, iou_sum] per category, in `categories` order.

    Summing the states of several accumulators (e.g. one per process) and passing the sum to
    `merge_state` of a fresh one gives the results over all their images.
    """
    return self._state.copy()

  def merge_state(self, state: np.ndarray) -> None:
    """Adds another accumulator's `state()` to this one."""
    state = np.asarray(state, np.float64)
    if state.shape != self._state.shape:
      raise ValueError(f'state must have shape {self._state.shape}, got {state.shape}')
    self._state += state

  def update(
    self,
    gt_ids: np.ndarray,
    gt_segments: Sequence[dict],
    pred_ids: np.ndarray,
    pred_segments: Sequence[dict],
    image_id: Any = None,
  ) -> None:
    """Adds one image.

    Args:
      gt_ids: integer (H, W) map of gt segment ids, 0 = void.
      gt_segments: dicts {'id', 'category_id', 'iscrowd' (default 0), 'area' (optional)}; as in
        panopticapi, a given 'area' is used as the segment's size, else its pixel count.
      pred_ids: integer (H, W) map of predicted segment ids, 0 = void.
      pred_segments: dicts {'id', 'category_id'}; every non-zero id of pred_ids must have one and
        every one must have pixels.
      image_id: names the image in error messages.
    """
    self._state += self.image_state(gt_ids, gt_segments, pred_ids, pred_segments, image_id)

  def image_state(
    self, gt_ids, gt_segments, pred_ids, pred_segments, image_id=None, matches=None
  ) -> np.ndarray:
    """The (num_categories, 4) [tp, fp, fn, iou_sum] of one image; `update` adds it.

    With a dict `matches`, every matched pair is also stored in it: {gt segment id: predicted
    segment id} (the uncertainty evaluator's right and wrong pixels follow from them).
    """
    where = f'In the image with ID {image_id}'
    gt_ids = _id_map(gt_ids, where, 'gt')
    pred_ids = _id_map(pred_ids, where, 'prediction')
    if gt_ids.shape != pred_ids.shape:
      raise PanopticFormatError(
        f'{where} the gt map has shape {gt_ids.shape} and the predicted map {pred_ids.shape}'
      )
    for segments, what in ((gt_segments, 'gt segment'), (pred_segments, 'predicted segment')):
      for segment in segments:
        require_keys(segment, ('id', 'category_id'), f'{where}, {what}')
    num_gt, num_pred = len(gt_segments), len(pred_segments)
    gt_seg_ids = np.array([int(s['id']) for s in gt_segments], np.int64)
    pred_seg_ids = np.array([int(s['id']) for s in pred_segments], np.int64)
    check_segment_ids(gt_seg_ids.tolist(), where + ' (gt)')
    check_segment_ids(pred_seg_ids.tolist(), where + ' (prediction)')

    # Prediction checks, in panopticapi's order and words.
    pred_index, unknown = segment_index(pred_ids, pred_seg_ids)
    if unknown.size:
      raise PanopticFormatError(
        f'{where} segment with ID {int(unknown[0])} is presented in PNG and not presented in JSON.'
      )
    pred_cat = self._category_rows(pred_segments, where, 'segment')
    gt_cat = self._category_rows(gt_segments, where, 'gt segment')

    # gt buckets: 0..num_gt-1 segments, num_gt void, num_gt + 1 ids without a segment.
    gt_index, _ = segment_index(gt_ids, gt_seg_ids)
    gt_void, gt_other = num_gt, num_gt + 1
    gt_index[(gt_index == num_gt) & (gt_ids != VOID)] = gt_other
    # pred buckets: 0..num_pred-1 segments, num_pred void.
    pred_buckets = num_pred + 1
    pair_g, pair_p, inter = _intersections(gt_index, pred_index, num_gt + 2, pred_buckets)

    pred_area = np.bincount(pair_p, weights=inter, minlength=pred_buckets)[:num_pred]
    missing = pred_seg_ids[pred_area == 0]
    if missing.size:
      raise PanopticFormatError(
        f'{where} the following segment IDs {missing.tolist()} are presented in JSON and not '
        'presented in PNG.'
      )
    pixel_area = np.bincount(pair_g, weights=inter, minlength=num_gt + 2)[:num_gt]
    gt_area = np.array(
      [s['area'] if 'area' in s else a for s, a in zip(gt_segments, pixel_area, strict=True)],
      np.float64,
    )
    gt_crowd = np.array([int(s.get('iscrowd', 0)) == 1 for s in gt_segments], bool)
    pred_void = np.bincount(
      pair_p[pair_g == gt_void], weights=inter[pair_g == gt_void], minlength=pred_buckets
    )

    state = np.zeros_like(self._state)
    # Matches: same category, gt not crowd, IoU > 0.5.
    is_seg = (pair_g < num_gt) & (pair_p < num_pred)
    g, p, n = pair_g[is_seg], pair_p[is_seg], inter[is_seg]
    candidate = ~gt_crowd[g] & (gt_cat[g] == pred_cat[p])
    g, p, n = g[candidate], p[candidate], n[candidate]
    union = pred_area[p] + gt_area[g] - n - pred_void[p]
    with np.errstate(divide='ignore', invalid='ignore'):
      iou = n / union
    matched = iou > 0.5
    np.add.at(state[:, TP], gt_cat[g[matched]], 1)
    np.add.at(state[:, IOU], gt_cat[g[matched]], iou[matched])
    if matches is not None:
      matches.update(
        zip(gt_seg_ids[g[matched]].tolist(), pred_seg_ids[p[matched]].tolist(), strict=True)
      )
    gt_matched = np.zeros(num_gt, bool)
    gt_matched[g[matched]] = True
    pred_matched = np.zeros(num_pred, bool)
    pred_matched[p[matched]] = True

    # False negatives: unmatched non-crowd gt segments.
    unmatched_gt = ~gt_matched & ~gt_crowd
    np.add.at(state[:, FN], gt_cat[unmatched_gt], 1)

    # False positives: unmatched predictions, unless mostly void + crowd of their category. As in
    # panopticapi, the crowd region of a category is its last crowd segment in the list.
    crowd_of_category = np.full(len(self.categories), -1, np.int64)
    for k in np.flatnonzero(gt_crowd):
      crowd_of_category[gt_cat[k]] = k
    g, p, n = pair_g[is_seg], pair_p[is_seg], inter[is_seg]
    in_crowd = crowd_of_category[pred_cat[p]] == g
    pred_crowd = np.bincount(p[in_crowd], weights=n[in_crowd], minlength=pred_buckets)
    ignored = (pred_void[:num_pred] + pred_crowd[:num_pred]) / pred_area > 0.5
    false_positive = ~pred_matched & ~ignored
    np.add.at(state[:, FP], pred_cat[false_positive], 1)
    return state

  def _category_rows(self, segments: Sequence[dict], where: str, what: str) -> np.ndarray:
    """State rows of the segments' categories; unknown categories are errors."""
    rows = np.zeros(len(segments), np.int64)
    for k, segment in enumerate(segments):
      category_id = segment.get('category_id')
      row = self._row.get(int(category_id)) if category_id is not None else None
      if row is None:
        raise PanopticFormatError(
          f'{where} {what} with ID {segment["id"]} has unknown category_id {category_id}.'
        )
      rows[k] = row
    return rows

  def results(self) -> dict:
    """PQ, SQ, RQ as panopticapi's `pq_compute` returns them.

    Returns:
      {'All' | 'Things' | 'Stuff': {'pq', 'sq', 'rq', 'n'}, 'per_class': {category_id: {'pq',
      'sq', 'rq', 'tp', 'fp', 'fn'}}}; values in [0, 1], n = number of categories averaged over.
    """
    per_class = {}
    for category, (tp, fp, fn, iou) in zip(self.categories, self._state, strict=True):
      entry = {'pq': 0.0, 'sq': 0.0, 'rq': 0.0, 'tp': int(tp), 'fp': int(fp), 'fn': int(fn)}
      if tp + fp + fn > 0:
        denominator = tp + 0.5 * fp + 0.5 * fn
        entry.update(
          pq=float(iou / denominator),
          sq=float(iou / tp) if tp != 0 else 0.0,
          rq=float(tp / denominator),
        )
      per_class[int(category['id'])] = entry
    results = {}
    for name, isthing in _GROUPS:
      pq = sq = rq = 0.0
      n = 0
      for category, (tp, fp, fn, _) in zip(self.categories, self._state, strict=True):
        if isthing is not None and (category['isthing'] == 1) != isthing:
          continue
        if tp + fp + fn == 0:
          continue
        entry = per_class[int(category['id'])]
        n += 1
        pq += entry['pq']
        sq += entry['sq']
        rq += entry['rq']
      results[name] = {
        'pq': pq / n if n else 0.0,
        'sq': sq / n if n else 0.0,
        'rq': rq / n if n else 0.0,
        'n': n,
      }
    results['per_class'] = per_class
    return results


def _id_map(ids, where: str, what: str) -> np.ndarray:
  """Checks an (H, W) integer id map with ids in [0, 2^24)."""
  ids = np.asarray(ids)
  if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
    raise PanopticFormatError(
      f'{where} the {what} map must be an (H, W) integer array, got {ids.dtype} {ids.shape}'
    )
  if ids.dtype not in (np.int32, np.int64):
    ids = ids.astype(np.int64)
  if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
    raise PanopticFormatError(f'{where} the {what} map has ids outside [0, {MAX_SEGMENT_ID}]')
  return ids


def _intersections(gt_index, pred_index, gt_buckets, pred_buckets):
  """Non-zero (gt bucket, pred bucket, pixel count) triples, sorted by gt then pred bucket."""
  key = gt_index.ravel() * pred_buckets + pred_index.ravel()
  cells = gt_buckets * pred_buckets
  if cells <= max(key.size, 1 << 20):
    counts = np.bincount(key, minlength=cells)
    keys = np.flatnonzero(counts)
    counts = counts[keys]
  else:  # Too many segment pairs for a dense table: sort instead.
    keys, counts = np.unique(key, return_counts=True)
  return keys // pred_buckets, keys % pred_buckets, counts.astype(np.float64)


def format_table(
  results: dict, categories: Sequence[dict] | None = None, per_class: bool = False
) -> str:
  """panopticapi's table (PQ, SQ, RQ in percent, N), optionally followed by one row per class."""
  lines = ['{:10s}| {:>5s}  {:>5s}  {:>5s} {:>5s}'.format('', 'PQ', 'SQ', 'RQ', 'N'), '-' * 38]
  for name, _ in _GROUPS:
    group = results[name]
    lines.append(
      '{:10s}| {:5.1f}  {:5.1f}  {:5.1f} {:5d}'.format(
        name, 100 * group['pq'], 100 * group['sq'], 100 * group['rq'], group['n']
      )
    )
  if per_class:
    names = {int(c['id']): str(c.get('name', c['id'])) for c in categories or ()}
    lines += [
      '',
      '{:24s}| {:>5s}  {:>5s}  {:>5s} {:>6s} {:>6s} {:>6s}'.format(
        'class', 'PQ', 'SQ', 'RQ', 'TP', 'FP', 'FN'
      ),
      '-' * 66,
    ]
    for category_id, entry in results['per_class'].items():
      category_id = int(category_id)
      lines.append(
        '{:24s}| {:5.1f}  {:5.1f}  {:5.1f} {:6d} {:6d} {:6d}'.format(
          names.get(category_id, str(category_id))[:24],
          100 * entry['pq'],
          100 * entry['sq'],
          100 * entry['rq'],
          entry.get('tp', 0),
          entry.get('fp', 0),
          entry.get('fn', 0),
        )
      )
  return '\n'.join(lines)
