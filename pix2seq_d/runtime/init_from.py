"""Starting a run from another run's weights (config.init_from): which arrays to copy, how.

`restore_for_init(path, state, mode)` reads only the arrays it needs from a pix2seq_d checkpoint
(a workdir, its checkpoints/ folder or one step folder) onto the fresh, sharded train state.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from etils import epath
from flax import nnx

from pix2seq_d.config import checks
from pix2seq_d.parallel import sharding
from pix2seq_d.runtime import checkpoints
from pix2seq_d.runtime.checkpoints import Path

# Parameter subtrees that 'encoder' partial init copies (with their BatchNorm statistics).
ENCODER_MODULES = ('resnet', 'encoder', 'fusion')
# The denoiser's first 1x1 conv: its input channels are [x_t bits | fused features | extra], so a
# model with more extra channels (video, self-conditioning) grows only this kernel's Cin.
GROWABLE_KERNEL = ('denoiser', 'conv_in', 'kernel')


def resolve_checkpoint(path: str | epath.PathLike) -> tuple[epath.Path, int]:
  """(checkpoint root, step) for config.init_from.path.

  Accepts a workdir (its newest step), its `checkpoints` directory (the newest step) or one step
  directory (`<workdir>/checkpoints/<step>`).

  Raises:
    FileNotFoundError: when nothing there looks like a checkpoint.
  """
  path = epath.Path(path)
  if (path / checkpoints.ITEM).exists() and path.name.isdigit():
    return path.parent, int(path.name)
  subdir = path / checkpoints.CHECKPOINT_SUBDIR
  root = subdir if subdir.exists() else path
  step = None
  if root.exists():
    manager = checkpoints.new_manager(root, read_only=True)
    step = manager.latest_step()
    manager.close()
  if step is None:
    raise FileNotFoundError(
      f'config.init_from.path={str(path)!r} is neither a workdir with checkpoints, a checkpoints '
      f'directory nor a checkpoint step directory.'
    )
  return root, step


def _weights(state: Any) -> dict[Path, Any]:
  """{path: leaf} of the arrays init_from may copy: every parameter and BatchNorm statistic.

  The EMA weights follow the copied params; optimiser state, step and RNG streams start fresh
  and are no part of it.
  """
  return {
    path: leaf
    for path, leaf in checkpoints.flat_state(state)
    if path[0] == 'params' or (path[0] == 'model_state' and isinstance(leaf, nnx.BatchStat))
  }


def _plan_counts(
  state: Any, copy: dict[Path, Path], grow: dict[Path, Path], reinit: dict[Path, tuple]
) -> dict[str, int]:
  """How a plan (`_copy_plan`) treats the state's parameters and BatchNorm statistics: 'copied'
  as they are, 'grown' (the denoiser's input conv), 'fresh' (kept as initialised: modules the
  old model lacked, arrays sized by another class count, and in mode 'encoder' everything
  outside the encoder), 'reinitialised' (those of 'fresh' sized by another class count), and
  'total'."""
  total = len(_weights(state))
  return {
    'copied': len(copy),
    'grown': len(grow),
    'fresh': total - len(copy) - len(grow),
    'reinitialised': len(reinit),
    'total': total,
  }


def _only_the_class_axis_differs(old: tuple, new: tuple, axis: int | None) -> bool:
  """Whether shapes `old` and `new` (same rank) differ at the class axis `axis` alone."""
  if axis is None or len(old) != len(new):
    return False
  return all((a == b) != (k == axis) for k, (a, b) in enumerate(zip(old, new, strict=True)))


def _copy_plan(
  state: Any,
  saved: dict[Path, tuple],
  mode: str,
  source: str,
  where: str,
  class_sized: Mapping[Path, int],
) -> tuple[dict[Path, Path], dict[Path, Path], dict[Path, tuple]]:
  """Which fresh-state paths take which checkpoint paths: (same shape, grown conv), and the
  arrays kept fresh because only their class axis differs: {path: (old shape, new shape)}."""
  copy, grow, reinit = {}, {}, {}
  for path, leaf in _weights(state).items():
    field, rest = path[0], path[1:]
    if field == 'params':
      src = (source,) + rest
    else:
      src = ('ema_model_state' if source == 'ema_params' else 'model_state',) + rest
    if mode == 'encoder' and rest[0] not in ENCODER_MODULES:
      continue
    shape = tuple(checkpoints.leaf_value(leaf).shape)
    if src not in saved:
      if mode == 'encoder':
        raise ValueError(
          f'{checkpoints.describe_path(src)} {shape} is not in {where}; '
          "config.init_from.mode='encoder' needs a checkpoint of a model with the "
          'same encoder.'
        )
      continue  # a module the old model did not have keeps its fresh init.
    old = tuple(saved[src])
    if old == shape:
      copy[path] = src
    elif (
      mode == 'all'
      and rest == GROWABLE_KERNEL
      and len(old) == 4
      and old[:2] == shape[:2]
      and old[3] == shape[3]
      and old[2] < shape[2]
    ):
      grow[path] = src
    elif mode == 'all' and _only_the_class_axis_differs(old, shape, class_sized.get(path)):
      reinit[path] = (old, shape)
    else:
      raise ValueError(
        f'{checkpoints.describe_path(path)} has shape {shape} in the model but {old} in {where} '
        f"(config.init_from.mode={mode!r}). Only the denoiser's input conv may grow (more "
        'input channels) and arrays sized by the class count (model.num_classes) start afresh; '
        "use mode 'encoder' to copy just the image encoder."
      )
  return copy, grow, reinit


def restore_for_init(
  path: str | epath.PathLike,
  state: Any,
  mode: str = 'all',
  from_ema: bool = False,
  class_sized: Mapping[Path, int] | None = None,
) -> Any:
  """Starts a new run from another run's weights (config.init_from).

  Args:
    path: config.init_from.path: a workdir, its checkpoints directory, or a step directory.
    state: the freshly initialised (sharded) steps.TrainState; copied weights take its shardings.
    mode: 'encoder' copies params and BatchNorm statistics under resnet/, encoder/ and fusion/
      (all of them must be in the checkpoint with the same shapes); 'all' copies every
      parameter and BatchNorm statistic whose path is in the checkpoint with the same shape and
      keeps the fresh init of modules the old model lacks. In 'all', the denoiser's first conv
      kernel params/denoiser/conv_in/kernel (1, 1, Cin, C) may have grown: its input channels are
      [x_t bits (16) | fused features (F) | extra], and an image model's [x_t | features] are the
      prefix, so the old (1, 1, Cin_old, C) kernel fills [:, :, :Cin_old, :] and the new extra
      channels' weights are ZERO, not the fresh init: the video (or self-conditioned) model then
      computes exactly what the image model did at the start, and learns to use the new inputs
      (their weights still get gradients).
      Also in 'all', an array of `class_sized` whose shape differs from the checkpoint's at its
      class axis alone (fine-tuning on a dataset with another class count: the auxiliary class
      head's kernel (F, C) and bias (C,)) keeps its fresh initial values, with a warning that
      names it and both shapes.
    from_ema: copy the checkpoint's EMA weights (and EMA statistics) instead of the raw ones.
    class_sized: {state path ('params', ...): axis} of the arrays sized by the class count
      (loops/state.py `class_sized_axes`); None: no array may differ for the class count.

  Returns:
    `state` with the copied weights; ema_params / ema_model_state equal to the new params /
    model state; optimiser state and step untouched (fresh).

  Raises:
    ValueError: for an unknown mode or any other mismatch (naming the path and both shapes).
    FileNotFoundError: when `path` holds no checkpoint.
  """
  checks.check_choice('init_from.mode', mode, checks.INIT_MODES)
  root, step = resolve_checkpoint(path)
  where = f'checkpoint {root}/{step} (config.init_from.path={str(path)!r})'
  manager = checkpoints.new_manager(root, read_only=True)
  saved = checkpoints.shapes_in_checkpoint(manager, step)
  source = 'ema_params' if from_ema else 'params'
  copy, grow, reinit = _copy_plan(state, saved, mode, source, where, class_sized or {})
  if reinit:
    logging.warning(
      'init_from %s: the class count differs, so %d arrays sized by it keep their fresh initial '
      'values: %s.',
      where,
      len(reinit),
      '; '.join(
        f'{checkpoints.describe_path(p)} {old} in the checkpoint, {new} in the model'
        for p, (old, new) in reinit.items()
      ),
    )
  fresh = dict(checkpoints.flat_state(state))

  targets = {}
  for dst, src in copy.items():
    targets[src] = checkpoints.storable_abstract(checkpoints.leaf_value(fresh[dst]))
  for dst, src in grow.items():
    value = checkpoints.leaf_value(fresh[dst])
    # A small 1x1 kernel: read it replicated; the grown one gets the fresh sharding below.
    grown_sharding = value.sharding
    if isinstance(grown_sharding, jax.sharding.NamedSharding):
      grown_sharding = jax.sharding.NamedSharding(grown_sharding.mesh, jax.sharding.PartitionSpec())
    targets[src] = jax.ShapeDtypeStruct(saved[src], value.dtype, sharding=grown_sharding)
  restored = checkpoints.restore_items(manager, step, targets, partial=True)
  manager.close()

  updates = {dst: restored[src] for dst, src in copy.items()}
  for dst, src in grow.items():
    value = checkpoints.leaf_value(fresh[dst])
    old = restored[src]
    kernel = jnp.zeros(value.shape, value.dtype).at[:, :, : old.shape[2], :].set(old)
    updates[dst] = jax.device_put(kernel, value.sharding)
  # Counted over params and BatchNorm statistics alike: `copy` holds both (counting it against
  # the params alone gave negative 'fresh' counts).
  counts = _plan_counts(state, copy, grow, reinit)
  logging.info(
    'init_from %s (mode %s): of %d parameters and BatchNorm statistics, copied %d, grew %d %s, '
    'kept %d fresh (%d of them re-initialised for the class count).',
    where,
    mode,
    counts['total'],
    counts['copied'],
    counts['grown'],
    [checkpoints.describe_path(p) for p in grow],
    counts['fresh'],
    counts['reinitialised'],
  )

  return with_arrays(state, updates)


def with_arrays(state: Any, updates: dict[Path, jax.Array]) -> Any:
  """`state` with the arrays at `updates`' paths ('params', ...) replaced, EMA equal to them.

  The EMA weights and statistics become copies of the new params and model state, as at the
  start of any run.
  """

  def replace(path, leaf):
    new = updates.get(sharding.path_names(path))
    if new is None:
      return leaf
    return leaf.replace(value=new) if checkpoints.is_variable(leaf) else new

  state = jax.tree_util.tree_map_with_path(replace, state, is_leaf=checkpoints.is_variable)
  # Copies, not aliases: the train step donates the whole state, and a buffer donated twice fails.
  return dataclasses.replace(
    state,
    ema_params=jax.tree.map(jnp.copy, state.params),
    ema_model_state=jax.tree.map(jnp.copy, state.model_state),
  )
