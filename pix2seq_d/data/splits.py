"""Per-process split arithmetic: which examples of a TFDS split spec each process reads.

Each process reads a disjoint, contiguous share of the split (the remainder spread over the first
processes, so the union is the whole split), like clu.deterministic_data with
RemainderOptions.BALANCE_ON_PROCESSES. Written here rather than with `tfds.even_splits` /
`tfds.split_for_jax_process` because those split every part of an 'a+b' spec separately and
cannot take the first N examples of a spec that already holds a slice (evaluation's
config.eval.num_examples on 'validation[:10%]'); here any spec is one concatenated sequence.
"""

from __future__ import annotations

import tensorflow_datasets as tfds


def processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(index, count) of this process; None takes jax.process_index() / jax.process_count()."""
  if process_index is None or process_count is None:
    import jax  # only for the defaults, so the pipeline itself stays usable without it.

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(
      f'process_index {process_index} must be in [0, process_count {process_count}).'
    )
  return process_index, process_count


def local_batch_size(global_batch: int, process_count: int, field: str) -> int:
  """The per-process share of a global batch; ValueError names `field` when it does not divide."""
  if global_batch <= 0 or global_batch % process_count:
    raise ValueError(
      f'{field} = {global_batch} must be a positive multiple of the process count {process_count}.'
    )
  return global_batch // process_count


def split_ranges(builder, split: str) -> list[tuple[str, int, int]]:
  """(split name, start, end) absolute example ranges of a split spec such as 'train[:10%]'."""
  instruction = tfds.core.ReadInstruction.from_spec(split)
  splits = builder.info.splits
  ranges = []
  for part in instruction.to_absolute(splits):
    if part.splitname not in splits:
      raise ValueError(
        f'Split {split!r} of dataset {builder.name!r} does not exist; available: {list(splits)}.'
      )
    end = part.to if part.to is not None else splits[part.splitname].num_examples
    ranges.append((part.splitname, part.from_ or 0, end))
  return ranges


def num_split_examples(builder, split: str) -> int:
  """Number of examples of a split spec such as 'train' or 'train[:10%]+test'."""
  return sum(end - start for _, start, end in split_ranges(builder, split))


def process_read_instruction(
  builder, split: str, process_index: int, process_count: int, limit: int | None = None
) -> tuple[tfds.core.ReadInstruction | None, int]:
  """This process's disjoint contiguous share of `split` (first `limit` examples when given).

  Shares differ by at most one example (the remainder goes to the first processes) and together
  cover the split exactly. Returns (read instruction or None when the share is empty, its size).
  """
  ranges = split_ranges(builder, split)
  total = sum(end - start for _, start, end in ranges)
  if limit is not None:
    total = min(total, limit)
  per_process, remainder = divmod(total, process_count)
  first = per_process * process_index + min(process_index, remainder)
  last = first + per_process + (1 if process_index < remainder else 0)
  parts = []
  offset = 0  # position of the current range in the concatenated split.
  for name, start, end in ranges:
    lo = max(first, offset) - offset + start
    hi = min(last, offset + end - start) - offset + start
    if lo < hi:
      parts.append(tfds.core.ReadInstruction(name, from_=lo, to=hi, unit='abs'))
    offset += end - start
  if not parts:
    return None, 0
  instruction = parts[0]
  for part in parts[1:]:
    instruction = instruction + part
  return instruction, last - first
