"""What every run that reads a dataset builds first, the same for training and evaluation.

  setup = setup.data_and_task(config, training=True)
  run_eval = setup.evaluation(eval_graphdef, state_shardings, workdir, writer)
  record = run_eval(ema_params, ema_model_state, step)

The class count may come from the dataset: it is applied here, once, to a copy of the config,
and the task and every later section hold that copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from absl import logging

from pix2seq_d.config import data_facts
from pix2seq_d.data import pipeline
from pix2seq_d.data import registry as data_registry
from pix2seq_d.data.source import Source
from pix2seq_d.loops import evaluate
from pix2seq_d.loops import state as state_lib
from pix2seq_d.parallel import sharding
from pix2seq_d.tasks import base as task_base
from pix2seq_d.tasks import registry as task_registry


@dataclasses.dataclass(frozen=True)
class DataAndTask:
  """The mesh, the dataset and the task of a run, with the config the task holds."""

  config: Any
  mesh: jax.sharding.Mesh
  source: Source
  info: pipeline.DatasetInfo
  task: task_base.Task

  def evaluation(
    self, eval_graphdef: Any, state_shardings: Any, workdir: str, writer
  ) -> Callable[[Any, Any, int], dict]:
    """(params, model_state, step) -> the record of one evaluation over the eval split.

    The task's sampler is compiled once (at the first call) for the EMA weights' shardings.
    """
    predict_fn = state_lib.jit_predict(
      self.task,
      eval_graphdef,
      state_shardings.ema_params,
      state_shardings.ema_model_state,
      self.mesh,
    )

    def run_eval(params, model_state, step: int) -> dict:
      return evaluate.evaluate(
        self.config,
        task=self.task,
        predict_fn=predict_fn,
        params=params,
        model_state=model_state,
        mesh=self.mesh,
        categories=self.info.categories,
        eval_iterator=self.task.eval_iterator(self.source),
        step=step,
        workdir=workdir,
        writer=writer,
      )

    return run_eval


def data_and_task(config, *, training: bool) -> DataAndTask:
  """The mesh, the dataset (prepared when it must be) and the task of `config`.

  Args:
    config: the experiment config.
    training: the run trains (its batch sizes are checked against the devices too).

  Raises:
    ValueError: a batch size does not split over the devices, the dataset does not fit the
      config or the task, or (training) its training split gives no window of frames (each
      message names the field or file).
  """
  mesh = sharding.make_mesh(config.mesh)
  logging.info('Mesh %s on %d processes.', dict(mesh.shape), jax.process_count())
  sharding.check_batch_sizes(config, sharding.data_parallel_size(mesh), training=training)
  source = data_registry.get_source(config)
  task_registry.check_source(task_registry.get_task(config), source)
  info = pipeline.dataset_info(config, source)
  if training:  # a split that gives no training window is named before any state is built
    pipeline.check_train_windows(config, source, source.split(config.data.train_split))
  config = data_facts.apply(config, info.categories, f'dataset {source.name!r}')
  return DataAndTask(config, mesh, source, info, task_registry.get_task(config))
