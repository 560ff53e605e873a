"""The evaluator interface: one metric over an evaluation pass, accumulated example by example.

An evaluation loop (loops/evaluate.py) builds the evaluators named in config.eval.metrics
(registry.py) and, for every example the task post-processed to its original size, calls
`update(ground_truth, prediction, example_id)`. At the end each process's `state()` is gathered
over the processes (as JSON, exactly) and `merge` combines them, so `results()` describes the
whole eval split on every process:

  evaluator = registry.make_evaluators(('pq',), categories)[0]
  for example in examples:                       # this process's share
    evaluator.update(example.ground_truth, evaluator.read(example), example.example_id)
  evaluator.merge(hosts.gather_json(evaluator.state()))
  results = evaluator.results()                  # scalars, details, table

Evaluators receive numpy arrays only, so the same code scores a run and files on disk: each
metric is also a command on files (pq.py, davis.py, stq.py), and `run_command` is the end they
share (bad input and an output file that cannot be written are one error line, exit status 1).
"""

from __future__ import annotations

import abc
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np

from pix2seq_d.runtime import json_files


class Panoptic(NamedTuple):
  """A panoptic prediction at original size: int (..., H, W) maps, (H, W) for an image and
  (T, H, W) for a clip. semantic = category index + 1 (0 void); instance ids (0 void)."""

  semantic: np.ndarray
  instance: np.ndarray


@dataclasses.dataclass(frozen=True)
class Results:
  """What an evaluator reports.

  Attributes:
    scalars: {name: number} for eval_results.json's record, its history and TensorBoard
      (eval/<name>); the names of all configured evaluators are distinct.
    details: JSON-able tables written beside the latest record under the evaluator's name
      (per class, per sequence).
    table: the text logged after each evaluation.
  """

  scalars: dict[str, float | int]
  details: dict[str, Any]
  table: str


class Evaluator(abc.ABC):
  """One metric over one evaluation pass (construct one per pass).

  Attributes:
    name: the name config.eval.metrics uses for it.
  """

  name: ClassVar[str]

  def __init__(self, categories: Sequence[dict]):
    """Args: categories: the dataset's panopticapi-style categories (semantic s is
    categories[s - 1])."""
    self.categories = [dict(category) for category in categories]

  @classmethod
  def from_config(cls, categories: Sequence[dict], eval_config) -> Evaluator:
    """The evaluator for an evaluation pass of config.eval (`eval_config`); evaluators with
    options (the STQ protocol's frames) read theirs from it."""
    del eval_config  # most evaluators have no options
    return cls(categories)

  def read(self, example) -> Any:
    """What `update` scores of a task's post-processed example (tasks/base.py `Example`): its
    `prediction`; evaluators of several samples read its `single` or `uncertainty` too."""
    return example.prediction

  @abc.abstractmethod
  def update(self, ground_truth: np.ndarray, prediction: Panoptic, example_id: Any) -> None:
    """Adds one example.

    Args:
      ground_truth: int (..., H, W, 3) [semantic, instance, crowd] at original size.
      prediction: the post-processed prediction of the same (..., H, W).
      example_id: names the example in the results and in error messages.
    """

  @abc.abstractmethod
  def state(self) -> Any:
    """The statistics of the examples seen so far, JSON-able (they cross processes as JSON)."""

  @abc.abstractmethod
  def merge(self, states: Sequence[Any]) -> None:
    """Replaces this evaluator's statistics by those of the union of `states`' examples (every
    process's `state()`, in process order: counts are summed, per-example rows united)."""

  @abc.abstractmethod
  def results(self) -> Results:
    """The metric over the examples of the merged statistics."""


def run_command(
  score: Callable[[], tuple[Any, str]],
  output_json: str | None,
  errors: tuple[type[Exception], ...] = (FileNotFoundError, ValueError),
) -> int:
  """The end of every evaluation command on files: check, score, print, write.

  `output_json` is checked before `score` runs (`json_files.check_output_path`), so a path that
  cannot be written costs no scoring; the results are then written whole or not at all. A bad
  input (one of `errors`) or an output that cannot be written is one `error: ...` line on stderr,
  without a traceback.

  Args:
    score: reads and scores the files; returns (the JSON-able results, the table to print).
    output_json: where to write the results (--output_json), or None.
    errors: the exceptions that mean bad input; their message names the file or flag.

  Returns:
    The exit status: 0, or 1 on an error.
  """
  try:
    if output_json:
      json_files.check_output_path(output_json, '--output_json')
    results, table = score()
  except (json_files.OutputPathError, *errors) as error:
    print(f'error: {error}', file=sys.stderr)
    return 1
  print(table, flush=True)
  if output_json:
    try:
      json_files.write_output_json(output_json, results, '--output_json')
    except json_files.OutputPathError as error:
      print(f'error: {error}', file=sys.stderr)
      return 1
  return 0
