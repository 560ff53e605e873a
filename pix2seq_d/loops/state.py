"""The train state on the mesh and the jitted programs: the one place that calls `jax.jit`.

  state, shardings, train_graphdef, eval_graphdef, tx = state.build_train_state(config, mesh)
  train_step = state.jit_train_step(config, tx, train_graphdef, shardings, mesh)
  predict = state.jit_predict(task, eval_graphdef, shardings.ema_params,
                              shardings.ema_model_state, mesh)

Weights are born sharded (abstract init, shardings from their logical axis names, then a jitted
init with those out_shardings), the state's buffers are donated to the train step, and every
batch array is split on its leading dimension over ('data', 'fsdp'). Used by the training loop,
the evaluation loop, the predict runner and the benchmark.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from pix2seq_d.loops import steps
from pix2seq_d.models import model as p2s
from pix2seq_d.parallel import sharding
from pix2seq_d.tasks import base as task_base
from pix2seq_d.tasks import registry


def build_model(config, *, rngs: nnx.Rngs, task: task_base.Task | None = None) -> p2s.Pix2SeqD:
  """The model of `config` with the denoiser inputs `task` conditions on (default: the
  configured task)."""
  task = task or registry.get_task(config)
  return p2s.build_model(config, rngs=rngs, cond_channels=task.cond_channels())


def class_sized_axes(config) -> dict[tuple[str, ...], int]:
  """{train-state path ('params', ...) or ('model_state', ...): axis} of the weights whose size
  along `axis` is config.model.num_classes (the auxiliary class head: kernel (F, C) axis 1,
  bias (C,) axis 0), for init_from across class counts.

  Found by building the abstract model (nothing allocated) with num_classes and num_classes + 1
  and comparing shapes, so no list of names has to follow the model.
  """

  def shapes(num_classes: int) -> dict[tuple[str, ...], tuple[int, ...]]:
    changed = config.copy_and_resolve_references()
    changed.model.num_classes = num_classes
    model = nnx.eval_shape(lambda: build_model(changed, rngs=nnx.Rngs(0)))
    _, params, model_state = nnx.split(model, nnx.Param, ...)
    tree = {'params': params, 'model_state': model_state}
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_variable)[0]
    return {sharding.path_names(path): tuple(_value(leaf).shape) for path, leaf in flat}

  num_classes = int(config.model.num_classes)
  now, more = shapes(num_classes), shapes(num_classes + 1)
  axes = {}
  for path, shape in now.items():
    differ = [k for k, (a, b) in enumerate(zip(shape, more[path], strict=True)) if a != b]
    if differ:
      (axes[path],) = differ
  return axes


def _is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def _value(leaf: Any) -> Any:
  return leaf.get_value() if _is_variable(leaf) else leaf


def init_sharded(
  init_fn: Callable[[], Any], mesh: jax.sharding.Mesh, rules: sharding.Rules | None = None
) -> tuple[Any, Any]:
  """Initialises a train state directly into its shardings.

  `jax.eval_shape(init_fn)` traces the initialiser without allocating anything; the shardings
  follow from the abstract state's metadata; then `jax.jit(init_fn, out_shardings=...)` runs it
  so that each device only ever holds its own shards (no full copy on one device first, which
  would not fit for large models).

  Args:
    init_fn: () -> state, e.g.
      `lambda: steps.create_train_state(build_model(config, rngs=nnx.Rngs(config.seed)), tx)`.
      It must be deterministic (it is traced twice).
    mesh: the device mesh.
    rules: the logical-axis rule table; defaults to sharding.DEFAULT_RULES.

  Returns:
    (state, shardings): the initialised state and the matching NamedSharding tree
    (see `sharding.state_shardings`).
  """
  abstract_state = jax.eval_shape(init_fn)
  shardings = sharding.state_shardings(abstract_state, mesh, rules)
  state = jax.jit(init_fn, out_shardings=shardings)()
  return state, shardings


def _init_fn(config, tx: optax.GradientTransformation, task: task_base.Task | None):
  """() -> the fresh TrainState of `config` (deterministic: seeded by config.seed)."""
  rngs = lambda: nnx.Rngs(params=config.seed, dropout=config.seed + 1)
  return lambda: steps.create_train_state(build_model(config, rngs=rngs(), task=task), tx)


class TrainStateParts(NamedTuple):
  """What `build_train_state` returns (a tuple: callers may unpack it)."""

  state: Any  # the TrainState, or its sharded `jax.ShapeDtypeStruct`s
  shardings: Any  # its NamedSharding tree
  train_graphdef: nnx.GraphDef  # the model in training mode
  eval_graphdef: nnx.GraphDef  # in evaluation mode (no rematerialisation)
  tx: optax.GradientTransformation


def build_train_state(
  config, mesh: jax.sharding.Mesh, *, abstract: bool = False, task: task_base.Task | None = None
) -> TrainStateParts:
  """Abstract model -> shardings -> train state initialised on the mesh.

  Args:
    config: the experiment config.
    mesh: the device mesh.
    abstract: return the state as sharded `jax.ShapeDtypeStruct`s without allocating it (for
      lowering, cost and memory analysis, and to restore a checkpoint into: `init_state` makes
      the fresh state of a run that restores none).
    task: the task the model serves (its conditioning inputs); default the configured task's.

  Returns:
    (state, state_shardings, train_graphdef, eval_graphdef, tx): the TrainState born sharded,
    its NamedSharding tree, the model's graphdefs in training and evaluation mode, the optimiser.
  """
  tx = steps.make_optimizer(config.train)
  rngs = lambda: nnx.Rngs(params=config.seed, dropout=config.seed + 1)
  abstract_model = nnx.eval_shape(lambda: build_model(config, rngs=rngs(), task=task))
  abstract_model.train()
  train_graphdef = nnx.graphdef(abstract_model)
  # Sampling has no backward pass, so rematerialisation would only recompute (and nnx.remat
  # cannot write its modules' state back from inside the sampler's lax.scan): the evaluation
  # model is the same model built without it, with the same variables.
  eval_config = config.copy_and_resolve_references()
  for part in eval_config.model.remat:
    eval_config.model.remat[part] = 'none'
  eval_model = nnx.eval_shape(lambda: build_model(eval_config, rngs=rngs(), task=task))
  eval_model.eval()
  eval_graphdef = nnx.graphdef(eval_model)
  init_fn = _init_fn(config, tx, task)
  if abstract:
    abstract_state = jax.eval_shape(init_fn)
    state_shardings = sharding.state_shardings(abstract_state, mesh)
    state = sharding.with_shardings(abstract_state, state_shardings)
  else:
    state, state_shardings = init_sharded(init_fn, mesh)
  return TrainStateParts(state, state_shardings, train_graphdef, eval_graphdef, tx)


def init_state(
  config,
  tx: optax.GradientTransformation,
  state_shardings: Any,
  task: task_base.Task | None = None,
) -> steps.TrainState:
  """The fresh train state of `config` born into `state_shardings` (those of
  `build_train_state(..., abstract=True)`): the same values as `build_train_state` allocates."""
  return jax.jit(_init_fn(config, tx, task), out_shardings=state_shardings)()


def restore_ema(manager, step: int, abstract_state: Any) -> tuple[Any, Any]:
  """(ema_params, ema_model_state) of checkpoint `step`, read alone (no optimiser state, no
  second copy of the weights) onto the shardings of `build_train_state(..., abstract=True)`."""
  ema = {'ema_params': abstract_state.ema_params, 'ema_model_state': abstract_state.ema_model_state}
  weights = manager.restore(step, ema, partial=True)
  return weights['ema_params'], weights['ema_model_state']


def jit_predict(
  task: task_base.Task,
  eval_graphdef: nnx.GraphDef,
  params_shardings: Any,
  model_state_shardings: Any,
  mesh: jax.sharding.Mesh,
) -> Callable:
  """The task's sampler (`Task.sample`) compiled for `mesh`:
  (params, model_state, inputs, key) -> ids, with every array of the `inputs` dict and the ids
  split over ('data', 'fsdp') on their leading (batch) dimension and the key replicated."""
  replicated = NamedSharding(mesh, PartitionSpec())
  batch = sharding.batch_sharding(mesh)
  predict = functools.partial(task.sample, eval_graphdef)
  return under_mesh(
    jax.jit(
      predict,
      in_shardings=(params_shardings, model_state_shardings, batch, replicated),
      out_shardings=batch,
    ),
    mesh,
  )


def jit_train_step(
  config,
  tx: optax.GradientTransformation,
  graphdef: nnx.GraphDef,
  state_shardings: Any,
  mesh: jax.sharding.Mesh,
  task: task_base.Task | None = None,
) -> Callable:
  """`steps.train_step` compiled for `mesh`: (state, batch, key) -> (state, metrics).

  The state keeps its shardings in and out and its buffers are donated (updated in place);
  every batch array is split on its leading dimension over ('data', 'fsdp'); the key and the
  scalar metrics are replicated.

  Args:
    config: the experiment config.
    tx: the optimiser the state was created with.
    graphdef: the model's graphdef in training mode.
    state_shardings: from `init_sharded` / `sharding.state_shardings`.
    mesh: the device mesh.
    task: what the denoiser is conditioned on (`Task.train_conditioning`); default: the
      configured task.
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  condition = (task or registry.get_task(config)).train_conditioning
  step = functools.partial(steps.train_step, graphdef, config=config, tx=tx, condition=condition)
  return under_mesh(
    jax.jit(
      step,
      in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated),
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,),
    ),
    mesh,
  )


def under_mesh(fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """`fn` called with `mesh` as the context mesh (`jax.set_mesh`).

  Code that must be written per device, such as the Pallas splash-attention kernel
  (models/attention.py), reads the mesh while the jitted function is traced. The returned
  function keeps `fn`'s `lower` for cost and memory analysis.
  """

  @functools.wraps(fn)
  def call(*args, **kwargs):
    with jax.set_mesh(mesh):
      return fn(*args, **kwargs)

  def lower(*args, **kwargs):
    with jax.set_mesh(mesh):
      return fn.lower(*args, **kwargs)

  call.lower = lower
  return call
