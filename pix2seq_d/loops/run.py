"""A run: what every mode builds once from the config and the workdir, and then shares.

  run = run_lib.open_run(config, workdir, data='train')   # or 'eval', 'workdir', None
  manager = run.checkpoint_manager()
  state, start_step = run.start_state(manager)             # restored, or fresh
  train_step, evaluate = run.train_step(), run.evaluation(run.writer())

Order: mesh -> dataset (categories) or the workdir's categories.json -> the config with the
dataset's class count -> the task (picked once, here); the abstract train state and its
shardings are traced when a mode first asks (`Run.model`). Nothing is allocated until a mode
asks: a resumed run restores into the abstract state (`start_state`), so no fresh state is alive
beside the restored one, and eval and predict read the EMA weights alone (`restore_ema`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
from absl import logging
from clu import metric_writers
from etils import epath

from pix2seq_d.config import data_facts
from pix2seq_d.loops import evaluate
from pix2seq_d.loops import state as state_lib
from pix2seq_d.parallel import sharding
from pix2seq_d.runtime import checkpoints, init_from, tf_weights, workdir_files
from pix2seq_d.tasks import base as task_base
from pix2seq_d.tasks import registry as task_registry

# open_run's `data`: the dataset's training or eval split, or the workdir's categories.json.
DATA = ('train', 'eval', 'workdir')


@dataclasses.dataclass(frozen=True)
class Run:
  """The mesh, the task and the dataset of one run, and its abstract train state.

  Attributes:
    config: the experiment config with the dataset's class count applied; the task holds it.
    workdir: the run's folder.
    mesh: the device mesh.
    task: the task (tasks/registry.py), the only judge of image versus video.
    categories: the dataset's categories (category k has semantic id k + 1); None for a run
      that reads neither a dataset nor the workdir (plan, summary).
    source: the dataset (data/source.py), or None for a run that reads none.

  The train state's parts are traced on first use (`model`), so a mode that never asks (the
  summary) does not pay for tracing the whole model.
  """

  config: Any
  workdir: str
  mesh: jax.sharding.Mesh
  task: task_base.Task
  categories: tuple | None
  source: Any

  @functools.cached_property
  def model(self) -> state_lib.TrainStateParts:
    """The train state as sharded `jax.ShapeDtypeStruct`s (nothing allocated), its shardings,
    the model's graphdefs and the optimiser (`state.build_train_state(..., abstract=True)`)."""
    return state_lib.build_train_state(self.config, self.mesh, abstract=True, task=self.task)

  def writer(self):
    """The clu metric writer of the workdir (TensorBoard on process 0, logging elsewhere)."""
    return metric_writers.create_default_writer(self.workdir, just_logging=jax.process_index() > 0)

  def checkpoint_manager(self, *, read_only: bool = False) -> checkpoints.CheckpointManager:
    """The workdir's checkpoints; `read_only` for a reader beside a training run."""
    if read_only:
      return checkpoints.CheckpointManager(self.workdir, read_only=True)
    return checkpoints.CheckpointManager(self.workdir, keep=self.config.train.keep_checkpoints)

  def start_state(self, manager: checkpoints.CheckpointManager) -> tuple[Any, int]:
    """(train state, its step): the latest checkpoint restored into the abstract state, else
    a fresh state (step 0) with config.init_from's weights when it names any."""
    restored = manager.restore_latest(self.model.state)
    if restored is not None:
      logging.info('Resumed from the checkpoint of step %d in %s.', restored[1], self.workdir)
      return restored
    config = self.config
    state = state_lib.init_state(config, self.model.tx, self.model.shardings, self.task)
    init = config.init_from
    if init.path and init.format == 'tf':
      state = tf_weights.restore_encoder(
        init.path, state, config.model.resnet.stage_sizes, config.model.encoder.num_layers
      )
    elif init.path:
      state = init_from.restore_for_init(
        init.path, state, init.mode, class_sized=state_lib.class_sized_axes(config)
      )
      logging.info('Initialised (%s) from %s.', init.mode, init.path)
    return state, 0

  def restore_ema(self, manager: checkpoints.CheckpointManager, step: int) -> tuple[Any, Any]:
    """(ema_params, ema_model_state) of checkpoint `step`, read alone onto their shardings."""
    return state_lib.restore_ema(manager, step, self.model.state)

  def train_step(self) -> Callable:
    """The jitted (state, batch, key) -> (state, metrics) (`state.jit_train_step`)."""
    model = self.model
    return state_lib.jit_train_step(
      self.config, model.tx, model.train_graphdef, model.shardings, self.mesh, self.task
    )

  def predict_fn(self) -> Callable:
    """The task's jitted sampler (params, model_state, inputs, key) -> ids."""
    model = self.model
    return state_lib.jit_predict(
      self.task,
      model.eval_graphdef,
      model.shardings.ema_params,
      model.shardings.ema_model_state,
      self.mesh,
    )

  def evaluation(self, writer) -> Callable[[Any, Any, int], dict]:
    """(params, model_state, step) -> the record of one evaluation over the eval split; the
    sampler is compiled once, at the first call."""
    predict_fn = self.predict_fn()

    def run_eval(params, model_state, step: int) -> dict:
      return evaluate.evaluate(
        self.config,
        task=self.task,
        predict_fn=predict_fn,
        params=params,
        model_state=model_state,
        mesh=self.mesh,
        categories=self.categories,
        eval_iterator=self.task.eval_iterator(self.source),
        step=step,
        workdir=self.workdir,
        writer=writer,
      )

    return run_eval


def open_run(config, workdir: str, *, data: str | None) -> Run:
  """The Run of `config` in `workdir`.

  Args:
    config: the experiment config (checked by config/checks.py's pass).
    workdir: the run's folder (nothing is written here).
    data: 'train' (the run trains: its training split must give examples, and the training
      batch must split over the devices), 'eval' (it evaluates config.data.eval_split),
      'workdir' (no dataset: the categories of the workdir's training run, for --mode=predict),
      or None (nothing is read: the config's own class count, for plan and summary).

  Raises:
    ValueError: a batch size does not split over the devices, or the dataset does not fit the
      config or the task (each message names the field or file).
    FileNotFoundError: `data='workdir'` and no categories.json in `workdir`.
  """
  if data is not None and data not in DATA:
    raise ValueError(f'open_run: data={data!r}; use one of {DATA} or None.')
  mesh = sharding.make_mesh(config.mesh)
  logging.info('Mesh %s on %d processes.', dict(mesh.shape), jax.process_count())
  source = categories = None
  if data == 'workdir':
    categories = workdir_files.read_categories(workdir)
    where = str(epath.Path(workdir) / workdir_files.CATEGORIES_FILE)
  elif data is not None:
    from pix2seq_d.data import pipeline  # TensorFlow only where a dataset is read.
    from pix2seq_d.data import registry as data_registry

    sharding.check_batch_sizes(config, sharding.data_parallel_size(mesh), training=data == 'train')
    source = data_registry.get_source(config)
    categories = pipeline.dataset_info(config, source).categories
    where = f'dataset {source.name!r}'
  if categories is not None:
    config = data_facts.apply(config, categories, where)
  task = task_registry.get_task(config)
  if source is not None:
    task.check_source(source, training=data == 'train')
  return Run(config, workdir, mesh, task, None if categories is None else tuple(categories), source)
