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

All of it works at the model's mask size; the image task then post-processes the merged map like
a single sample and resizes the uncertainty the same way.
"""

from __future__ import annotations

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


def merge_samples(
  samples: np.ndarray, num_classes: int, max_instances: int, match_iou: float
) -> tuple[np.ndarray, np.ndarray]:
  """K samples of one image -> one merged sample and its per-pixel uncertainty (module doc).

  Args:
    samples: (K, H, W, 2) int [semantic, instance] ids at mask size.
    num_classes, max_instances: the id ranges.
    match_iou: the IoU a matched pair of segments must exceed.

  Returns:
    (merged, uncertainty): merged (H, W, 2) int32 ids (the reference sample's ids for its
    segments, unused ids for segments that won without matching it); uncertainty (H, W)
    float32 in [0, 1].
  """
  num, height, width = samples.shape[:3]
  parts = [segments(sample, num_classes, max_instances) for sample in samples]
  if num == 1:
    return samples[0].astype(np.int32), np.zeros((height, width), np.float32)
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
  return merged, uncertainty.reshape(height, width).astype(np.float32)
