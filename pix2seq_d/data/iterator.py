"""The iterator the input pipelines return: numpy batches, with counters from the tf.data workers.

Training batches carry each example's stream position under POSITION_KEY; the iterator pops it
and keeps the position after its last batch (`DataIterator.position`) for resuming.
"""

from __future__ import annotations

import threading

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

# Key of the stream position each training example carries into its batch (popped by the
# iterator, which keeps the position after its last batch for resuming).
POSITION_KEY = '_stream_position'


class TooManyBrokenExamplesError(ValueError):
  """Training met config.data.max_skips_in_a_row broken examples without making a batch."""


class PipelineStats:
  """Thread-safe counters the tf.data workers update through tf.py_function.

  Args:
    max_skips_in_a_row: broken examples allowed in a row, with no good one between them (0 = no
      limit).
  """

  def __init__(self, max_skips_in_a_row: int = 0):
    self._lock = threading.Lock()
    self._max_skips_in_a_row = max_skips_in_a_row
    self.skipped = 0
    self.dropped_segments = 0
    self.failure: str | None = None

  def record_skip(self, error, example_id, in_a_row) -> np.bool_:
    """Counts and logs a skipped example, the `in_a_row`-th broken one in a row; returns False
    (the filter's verdict).

    Raises:
      TooManyBrokenExamplesError: (in the tf.data worker; `DataIterator` re-raises it) the
        limit of skips in a row is reached.
    """
    message = error.numpy().decode('utf-8', 'replace')
    example_id = int(example_id.numpy())
    limit = self._max_skips_in_a_row
    with self._lock:
      self.skipped += 1
      if limit and int(in_a_row.numpy()) >= limit and self.failure is None:
        self.failure = (
          f'{limit} training examples in a row are broken (config.data.max_skips_in_a_row='
          f'{limit}), so the data cannot make batches; fix the data. The last one, example '
          f'{example_id}: {message}'
        )
    if self.failure is not None:
      raise TooManyBrokenExamplesError(self.failure)
    logging.warning('Skipping training example %d: %s', example_id, message)
    return np.bool_(False)

  def record_dropped(self, count, example_id) -> np.int32:
    """Counts and logs segments made void because max_instances was exceeded; returns count."""
    count = int(count.numpy())
    with self._lock:
      self.dropped_segments += count
    logging.warning(
      'Example %d: %d segments beyond config.model.max_instances - 1 became void.',
      int(example_id.numpy()),
      count,
    )
    return np.int32(count)


class DataIterator:
  """Iterator of dicts of numpy arrays with the pipeline's counters.

  Attributes:
    skipped: training examples skipped so far because their 'error' was set.
    dropped_segments: segments made void so far because an example had too many.
    num_batches: batches per pass for evaluation (None for the endless training stream).
    position: training: the stream position after the last batch handed out (the
      `start_position` that continues right after it).
  """

  def __init__(
    self,
    dataset: tf.data.Dataset,
    stats: PipelineStats,
    *,
    check_errors: bool = False,
    num_batches: int | None = None,
    start_position: int = 0,
  ):
    self._iterator = iter(tfds.as_numpy(dataset))
    self._stats = stats
    self._check_errors = check_errors
    self.num_batches = num_batches
    self.position = start_position

  @property
  def skipped(self) -> int:
    return self._stats.skipped

  @property
  def dropped_segments(self) -> int:
    return self._stats.dropped_segments

  def __iter__(self) -> DataIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      batch = next(self._iterator)
    except tf.errors.OpError:
      if self._stats.failure is not None:  # raised in a tf.data worker; say it plainly here.
        raise TooManyBrokenExamplesError(self._stats.failure) from None
      raise
    if POSITION_KEY in batch:
      self.position = int(np.max(batch.pop(POSITION_KEY))) + 1
    if 'error' in batch:
      errors = np.atleast_1d(batch.pop('error'))
      valid = np.atleast_1d(batch.get('valid', True))
      if self._check_errors:
        for error, is_valid in zip(errors, valid, strict=True):
          if is_valid and error:
            raise ValueError(error.decode('utf-8', 'replace'))
    return batch
