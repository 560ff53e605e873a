"""Host-side values across the processes of a run: what every process must agree on or share.

Each function is a collective: every process calls it at the same point, and with one process it
returns at once without communicating.
"""

import json
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec

from pix2seq_d.parallel import sharding


def local_rows(array: jax.Array, mesh: jax.sharding.Mesh) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in the order it fed them."""
  if jax.process_count() == 1:
    return np.asarray(array)
  local = multihost_utils.global_array_to_host_local_array(
    array, mesh, PartitionSpec(sharding.BATCH_AXES)
  )
  return np.asarray(local)


def max_over_processes(value: int) -> int:
  """The largest of every process's `value`."""
  if jax.process_count() == 1:
    return int(value)
  return int(np.max(multihost_utils.process_allgather(np.int64(value))))


def gather_json(value: Any) -> list[Any]:
  """Every process's JSON-able `value`, in process order (a list of one with one process).

  JSON keeps floats exactly (Python writes the shortest text that reads back to the same
  float64), so statistics summed after gathering equal those of one process that saw everything.
  """
  if jax.process_count() == 1:
    return [value]
  encoded = np.frombuffer(json.dumps(value).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int64(len(encoded))))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[: len(encoded)] = encoded
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [
    json.loads(bytes(data[: int(size)]).decode())
    for size, data in zip(sizes, gathered, strict=True)
  ]


def value_of_first(value: int) -> int:
  """Process 0's `value` on every process: one decision that every process then follows."""
  if jax.process_count() == 1:
    return int(value)
  return int(multihost_utils.broadcast_one_to_all(np.int64(value)))
