"""Instance ids of training and evaluation labels: which id each segment of a label gets.

The model must write every segment's instance id into 8 bits, so the ids a label carries
(1..S in the dataset's order) are mapped onto 1..max_instances-1, in one of four orders
(config.data.instance_id_order): random distinct ids (the paper's images), a shuffle of 1..N (the
authors' DAVIS and Cityscapes setting), a shuffle of 1..(largest track id) applied to the
dataset's own track ids (the authors' KITTI-STEP setting: only tracked things have ids), or by
location (each segment takes the cell of a grid that holds its centroid). All frames of a clip
share one mapping, so ids stay consistent over time. Pure, tf-traceable functions with stateless
seeds, like augment.py.
"""

from __future__ import annotations

import math

import tensorflow as tf

from pix2seq_d.config import checks

INSTANCE_ID_ORDERS = checks.INSTANCE_ID_ORDERS


def location_grid(capacity: int) -> tuple[int, int]:
  """(rows, cols) of the 'location' id grid: rows = floor(sqrt(capacity)), cols = capacity // rows.

  E.g. 15 ids -> 3 x 5, 255 -> 15 x 17; ids beyond rows * cols (31 -> 5 x 6 = 30) are given to
  segments that find every cell taken.
  """
  rows = max(1, math.isqrt(capacity))
  return rows, capacity // rows


def location_ids(
  instance: tf.Tensor, counts: tf.Tensor, by_size: tf.Tensor, num_kept: tf.Tensor, capacity: int
) -> tf.Tensor:
  """Ids by position (SOLO-like): a segment's id is the grid cell that holds its centroid.

  The label's (H, W) plane is divided into `location_grid(capacity)` cells, numbered 1.. in
  raster order. The kept segments, largest first, each take the free cell whose centre is
  nearest to their centroid (in cell units, so a free containing cell is always chosen), then the
  ids beyond the grid. The ids are a function of the label: what the model must output for an
  object depends on where the object is, not on a draw shared by all its pixels.

  Args:
    instance: int32 (..., H, W) segment ids; the centroid is over all leading dims.
    counts: int32 (num_ids,) pixels per segment id (0 for id 0).
    by_size: int32 (num_ids,) segment ids, largest first.
    num_kept: int32 () how many of `by_size` get an id (at most capacity).
    capacity: number of usable ids (max_instances - 1).

  Returns:
    int32 (num_ids,) new id per original id (0 where not kept).
  """
  rows, cols = location_grid(capacity)
  shape = tf.shape(instance)
  height, width = shape[-2], shape[-1]
  flat = tf.reshape(instance, [-1])
  num_ids = tf.shape(counts)[0]
  # Row and column of every pixel of the flattened (..., H, W) label.
  position = tf.range(tf.size(flat))
  ys = tf.cast((position // width) % height, tf.float32)
  xs = tf.cast(position % width, tf.float32)
  area = tf.maximum(tf.cast(counts, tf.float32), 1.0)
  # Centroids in cell units: (num_ids,).
  cy = (tf.math.unsorted_segment_sum(ys, flat, num_ids) / area + 0.5) * rows
  cy = cy / tf.cast(height, tf.float32)
  cx = (tf.math.unsorted_segment_sum(xs, flat, num_ids) / area + 0.5) * cols
  cx = cx / tf.cast(width, tf.float32)
  cell = tf.range(capacity)
  centre_y = tf.cast(cell // cols, tf.float32) + 0.5
  centre_x = tf.cast(cell % cols, tf.float32) + 0.5
  distance = tf.square(cy[:, None] - centre_y) + tf.square(cx[:, None] - centre_x)
  # Slots beyond the grid come after every cell, in id order.
  beyond = tf.cast(cell >= rows * cols, tf.float32) * (1e6 + tf.cast(cell, tf.float32))
  distance = distance + beyond  # (num_ids, capacity)

  def take(i, taken, new_ids):
    segment = by_size[i]
    slot = tf.argmin(distance[segment] + tf.where(taken, 1e12, 0.0), output_type=tf.int32)
    taken = tf.tensor_scatter_nd_update(taken, [[slot]], [True])
    new_ids = tf.tensor_scatter_nd_update(new_ids, [[segment]], [slot + 1])
    return i + 1, taken, new_ids

  _, _, new_ids = tf.while_loop(
    lambda i, *_: i < num_kept,
    take,
    (tf.constant(0), tf.zeros([capacity], tf.bool), tf.zeros([num_ids], tf.int32)),
  )
  return new_ids


def assign_instance_ids(
  label: tf.Tensor, max_instances: int, seed: tf.Tensor | None = None, order: str = 'random'
) -> tuple[tf.Tensor, tf.Tensor]:
  """Maps the segments of `label` onto distinct ids in 1..max_instances-1; 0 stays 0.

  If there are more than max_instances - 1 segments, the largest ones (pixel count over the whole
  label, ties to the smaller original id) are kept and the rest become void (0, 0).

  Args:
    label: int32 (..., 2) = [semantic, instance]; all leading dims (e.g. the frames of a clip)
      share one mapping, so ids stay consistent over time.
    max_instances: number of instance ids including 0.
    seed: int (2,) stateless seed: random ids as `order` says. None: the kept segments are
      numbered 1..K in the order of their original ids (identity when they already are 1..K).
    order: with a seed, 'random' draws K distinct ids anywhere in 1..max_instances-1; 'shuffle'
      permutes 1..K (compact ids, the authors' DAVIS and Cityscapes setting); 'track' expects the
      dataset's own track ids (gaps allowed, 0 on everything untracked) and maps id i to p[i] for
      a permutation p of 1..(largest id), as the authors' KITTI-STEP training
      (`process_instance_id_map` of their data/video.py); a label whose largest id exceeds
      max_instances - 1, which their ids would overflow, gets the 'random' ids instead;
      'location' ignores the seed and gives each segment the id of where its centroid lies
      (`location_ids`).

  Returns:
    (label int32 (..., 2), number of dropped segments int32 ()).
  """
  capacity = max_instances - 1
  if capacity < 1:
    raise ValueError(f'config.model.max_instances must be >= 2, got {max_instances}.')
  semantic, instance = label[..., 0], label[..., 1]
  flat = tf.reshape(instance, [-1])
  num_ids = tf.reduce_max(tf.concat([flat, [0]], 0)) + 1
  counts = tf.math.bincount(flat, minlength=num_ids, maxlength=num_ids, dtype=tf.int32)
  counts = counts * tf.cast(tf.range(num_ids) > 0, tf.int32)  # id 0 is void, not a segment.
  present = counts > 0
  num_present = tf.reduce_sum(tf.cast(present, tf.int32))
  # Stable descending sort: equal sizes keep ascending id order, so the result is deterministic.
  by_size = tf.argsort(counts, direction='DESCENDING', stable=True)
  rank = tf.math.invert_permutation(by_size)  # rank[id] = position by size.
  kept = present & (rank < capacity)
  checks.check_choice('data.instance_id_order', order, INSTANCE_ID_ORDERS)
  if seed is None:
    new_ids = tf.cumsum(tf.cast(kept, tf.int32)) * tf.cast(kept, tf.int32)
  elif order == 'location':
    new_ids = location_ids(instance, counts, by_size, tf.minimum(num_present, capacity), capacity)
  elif order == 'shuffle':
    num_kept = tf.minimum(num_present, capacity)
    permutation = tf.random.experimental.stateless_shuffle(tf.range(1, num_kept + 1), seed)
    new_ids = tf.where(kept, tf.gather(permutation, tf.minimum(rank, num_kept - 1)), 0)
  else:
    permutation = tf.random.experimental.stateless_shuffle(tf.range(1, capacity + 1), seed)
    new_ids = tf.where(kept, tf.gather(permutation, tf.minimum(rank, capacity - 1)), 0)
    if order == 'track':
      # Every id fits (then every present id is kept): the shuffle keeps the gaps between ids.
      ids = tf.random.experimental.stateless_shuffle(tf.range(1, num_ids), seed)
      new_ids = tf.where(num_ids - 1 <= capacity, tf.concat([[0], ids], 0), new_ids)
  new_instance = tf.gather(new_ids, instance)
  dropped = (instance > 0) & (new_instance == 0)
  new_semantic = tf.where(dropped, 0, semantic)
  num_dropped = tf.maximum(num_present - capacity, 0)
  return tf.stack([new_semantic, new_instance], axis=-1), num_dropped
