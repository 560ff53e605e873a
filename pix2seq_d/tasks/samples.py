"""Several samples of one image's mask: merged into one panoptic map, with a per-pixel uncertainty.

A diffusion model draws a different segmentation for every noise, and the instance ids of each
sample are arbitrary (training permutes them), so samples are compared through their segments,
never through their id values:

  1. each sample's segments: every instance id takes its majority class (instance 0 and class-0
     majorities are void), numbered by their first pixel in raster order, not by id;
  2. every pair of samples is matched by the Hungarian algorithm on class-aware IoU (segments of
     different classes never match; a pair is kept when its IoU exceeds `match_iou`), and the
     reference is the sample whose matches cover the most pixels over all the others (the medoid);
  3. every sample votes per pixel for the reference segment its own segment matched, for its own
     unmatched segment, or for void; the merged map takes the winner (ties go to the reference);
  4. the uncertainty of a pixel is 1 - (votes of the winner) / K, scaled to [0, 1]: 0 where all K
     samples agree, 1 where no two do.

Steps 1-3 work at the model's mask size, and the image task post-processes the merged map like a
single sample. The uncertainty is read at the original size (`uncertainty_at`): every sample's
vote for the winner is interpolated bilinearly between mask cells, so that a pixel near a
boundary of the coarse mask grid, where the K samples may all agree on a cell that the true
boundary crosses, is uncertain in proportion to how close the boundary is. Inside a cell and away
from boundaries it is step 4's figure.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import optimize

from pix2seq_d.tasks import postprocess


def segments(sample: np.ndarray, num_classes: int, max_instances: int):
  """One sample's segments, numbered independently of its id values.

  Args:
    sample: (H, W, 2) int [semantic, instance] ids.
    num_classes, max_instances: the id ranges.

  Returns:
    (labels, classes, ids): labels (H * W,) int64, the segment index of each pixel (-1 void),
    segments in the order of their first pixel; classes (n,) and ids (n,) int64 of each segment.
  """
  semantic, instance = postprocess.majority_vote(
    sample[..., 0], sample[..., 1], num_classes, max_instances, min_pixels=1
  )
  flat = instance.ravel().astype(np.int64)
  ids, first = np.unique(flat, return_index=True)
  keep = ids > 0
  ids, first = ids[keep], first[keep]
  order = np.argsort(first, kind='stable')
  ids, first = ids[order], first[order]
  rank = np.full(max_instances, -1, np.int64)
  rank[ids] = np.arange(len(ids))
  labels = rank[flat]
  return labels, semantic.ravel()[first].astype(np.int64), ids


def match(
  labels_a: np.ndarray,
  classes_a: np.ndarray,
  labels_b: np.ndarray,
  classes_b: np.ndarray,
  match_iou: float,
) -> tuple[np.ndarray, int]:
  """Hungarian matching of B's segments to A's on class-aware IoU.

  Args:
    labels_a, labels_b: (P,) segment index per pixel (-1 void) of two samples.
    classes_a, classes_b: (na,), (nb,) class of each segment.
    match_iou: a matched pair's IoU must exceed it.

  Returns:
    (to_a, covered): to_a (nb,) int64, the A segment each B segment matched (-1 none); covered,
    the pixels in the intersections of the matched pairs.
  """
  na, nb = len(classes_a), len(classes_b)
  to_a = np.full(nb, -1, np.int64)
  if na == 0 or nb == 0:
    return to_a, 0
  both = (labels_a >= 0) & (labels_b >= 0)
  inter = np.bincount(labels_a[both] * nb + labels_b[both], minlength=na * nb).reshape(na, nb)
  area_a = np.bincount(labels_a[labels_a >= 0], minlength=na)
  area_b = np.bincount(labels_b[labels_b >= 0], minlength=nb)
  iou = inter / (area_a[:, None] + area_b[None, :] - inter)
  iou[classes_a[:, None] != classes_b[None, :]] = 0.0
  rows, cols = optimize.linear_sum_assignment(-iou)
  good = iou[rows, cols] > match_iou
  to_a[cols[good]] = rows[good]
  return to_a, int(inter[rows[good], cols[good]].sum())


class Merge(NamedTuple):
  """K samples of one image merged (`merge_samples`), all at the mask size (H, W).

  ids: (H, W, 2) int32 merged [semantic, instance] ids.
  uncertainty: (H, W) float32 in [0, 1], 1 - the winner's share of the votes, scaled.
  votes: (K, H, W) int64, each sample's vote per pixel in one label space (-1 void).
  winner: (H, W) int64, the winning label of each pixel.
  """

  ids: np.ndarray
  uncertainty: np.ndarray
  votes: np.ndarray
  winner: np.ndarray


def merge_samples(
  samples: np.ndarray, num_classes: int, max_instances: int, match_iou: float
) -> Merge:
  """K samples of one image -> one merged sample, its votes and uncertainty (module doc).

  Args:
    samples: (K, H, W, 2) int [semantic, instance] ids at mask size.
    num_classes, max_instances: the id ranges.
    match_iou: the IoU a matched pair of segments must exceed.

  Returns:
    The Merge: its ids are the reference sample's for its segments and unused ids for segments
    that won without matching it.
  """
  num, height, width = samples.shape[:3]
  parts = [segments(sample, num_classes, max_instances) for sample in samples]
  if num == 1:
    labels = parts[0][0].reshape(1, height, width)
    return Merge(
      samples[0].astype(np.int32), np.zeros((height, width), np.float32), labels, labels[0]
    )
  matches = {}
  covered = np.zeros(num, np.int64)
  for a in range(num):
    for b in range(num):
      if a != b:
        matches[a, b], pixels = match(parts[a][0], parts[a][1], parts[b][0], parts[b][1], match_iou)
        covered[a] += pixels
  ref = int(np.argmax(covered))  # the first of equals: sample order, never id values
  ref_labels, ref_classes, ref_ids = parts[ref]
  # One label space: the reference's segments, then every sample's unmatched ones, then void.
  votes, classes, next_label = [], list(ref_classes), len(ref_classes)
  order = [ref] + [k for k in range(num) if k != ref]  # the reference wins ties
  for k in order:
    labels, seg_classes, _ = parts[k]
    if k == ref:
      to_common = np.arange(len(seg_classes))
    else:
      to_common = matches[ref, k].copy()
      unmatched = np.flatnonzero(to_common < 0)
      to_common[unmatched] = next_label + np.arange(len(unmatched))
      classes += list(seg_classes[unmatched])
      next_label += len(unmatched)
    votes.append(np.where(labels >= 0, to_common[np.maximum(labels, 0)], -1))
  votes = np.stack(votes)  # (K, P), void = -1
  counts = (votes[:, None, :] == votes[None, :, :]).sum(axis=1)  # (K, P) votes for each's label
  winner_row = np.argmax(counts, axis=0)  # first maximum: the reference on ties
  columns = np.arange(votes.shape[1])
  winner = votes[winner_row, columns]
  agreement = counts[winner_row, columns] / num
  uncertainty = (1.0 - agreement) / (1.0 - 1.0 / num)

  classes = np.asarray(classes, np.int64)
  ids = np.zeros(next_label, np.int64)
  ids[: len(ref_ids)] = ref_ids
  free = np.setdiff1d(np.arange(1, max_instances), ref_ids)
  extra = np.arange(len(ref_ids), next_label)
  won = np.isin(extra, winner)
  # Unmatched segments that won somewhere get unused ids (void when the id range is used up).
  granted = extra[won][: len(free)]
  ids[granted] = free[: len(granted)]
  semantic = np.where(winner >= 0, classes[np.maximum(winner, 0)], 0)
  instance = np.where(winner >= 0, ids[np.maximum(winner, 0)], 0)
  semantic = np.where(instance > 0, semantic, 0)
  merged = np.stack([semantic, instance], axis=-1).reshape(height, width, 2).astype(np.int32)
  return Merge(
    merged,
    uncertainty.reshape(height, width).astype(np.float32),
    votes.reshape(num, height, width),
    winner.reshape(height, width),
  )


def uncertainty_at(
  merge: Merge,
  padded_size: tuple[int, int],
  unpadded_size: tuple[int, int],
  orig_size: tuple[int, int],
) -> np.ndarray:
  """The uncertainty of a Merge at the original size, votes interpolated between cells.

  Each pixel's winner is the merged map's (nearest cell, as the prediction is resized); the
  share of samples that vote for it is the bilinear interpolation of that label's share over the
  neighbouring cells; the uncertainty is 1 - share, scaled as in `merge_samples` and clipped to
  [0, 1] (a pixel whose winner the neighbouring cells do not vote for is 1).

  Args:
    merge: the K samples merged at mask size (Hm, Wm).
    padded_size, unpadded_size, orig_size: as `postprocess.to_original_size`.

  Returns:
    (Ho, Wo) float32 in [0, 1].
  """
  num = len(merge.votes)
  if num == 1:
    return np.zeros(tuple(int(v) for v in orig_size), np.float32)
  sizes = (padded_size, unpadded_size, orig_size)
  winner = postprocess.to_original_size(merge.winner, *sizes)
  share = np.zeros(winner.shape, np.float64)
  for label in np.unique(merge.winner):
    where = winner == label
    if where.any():
      votes = (merge.votes == label).mean(axis=0)
      share[where] = postprocess.to_original_size(votes, *sizes, method='bilinear')[where]
  return np.clip((1.0 - share) / (1.0 - 1.0 / num), 0.0, 1.0).astype(np.float32)
