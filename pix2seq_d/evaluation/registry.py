"""config.eval.metrics names -> evaluator plug-ins (base.Evaluator): the one list of them.

  evaluators = registry.make_evaluators(config.eval.metrics, categories)

A task says which of them it can feed (`Task.metrics`); the config check refuses any other name
before anything runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from pix2seq_d.evaluation import (
  base,
  davis_evaluator,
  edit_evaluators,
  pq_evaluator,
  samples_evaluators,
  stq_evaluator,
)

EVALUATORS: dict[str, type[base.Evaluator]] = {
  evaluator.name: evaluator
  for evaluator in (
    pq_evaluator.PQEvaluator,
    davis_evaluator.DavisJFEvaluator,
    stq_evaluator.STQEvaluator,
    samples_evaluators.PQSingleEvaluator,
    samples_evaluators.UncertaintyAUROCEvaluator,
    edit_evaluators.PQInputEvaluator,
    edit_evaluators.PQRestEvaluator,
    edit_evaluators.PQRestUnaidedEvaluator,
    edit_evaluators.GivenPixelsKeptEvaluator,
  )
}


def make_evaluators(
  names: Sequence[str], categories: Sequence[dict], eval_config=None
) -> list[base.Evaluator]:
  """Fresh evaluators, one per name, in the given order; with `eval_config` (config.eval) each
  takes its options from it (`Evaluator.from_config`), else their defaults.

  Raises:
    ValueError: a name that no evaluator has, naming config.eval.metrics and the known names.
  """
  unknown = [name for name in names if name not in EVALUATORS]
  if unknown:
    raise ValueError(
      f'config.eval.metrics={tuple(names)!r}: no evaluator is named '
      f'{", ".join(map(repr, unknown))}; the evaluators are {", ".join(map(repr, EVALUATORS))}.'
    )
  if eval_config is None:
    return [EVALUATORS[name](categories) for name in names]
  return [EVALUATORS[name].from_config(categories, eval_config) for name in names]
