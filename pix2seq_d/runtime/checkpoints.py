"""Checkpoints: the orbax CheckpointManager of a run, and resume onto sharded state.

Layout: `<workdir>/checkpoints/<step>/state/...`, one orbax PyTree item 'state' per step. The train
state is saved as a nested dict of arrays keyed by its tree path (step, params/..., model_state/...,
opt_state/1/0/mu/..., ema_params/..., ema_model_state/...), so the files do not depend on how a
flax or optax version registers its pytree classes; PRNG keys are stored as their uint32 key data.

Saving is asynchronous: `save` returns once the arrays are copied off the accelerator, and the
files are written in a background thread. Orbax writes a step into a temporary directory and
renames it (or, on gs://, writes a commit marker) when complete, so a crash never leaves a
half-written step that `restore_latest` would pick up. Call `wait_until_finished()` before exit.

A manager opened with `read_only=True` (evaluation, a follower evaluator, predict) never creates,
deletes or cleans anything: the temporary folder of a step that a live training run is writing
right now is not a leftover to it, and orbax lists only completed steps, so such a step is
simply not there yet.

Paths are `etils.epath` paths, so workdirs may be local or gs://. Starting from another run's
weights is init_from.py; signal handling (SIGINT, SIGTERM) is preemption.py.
"""

import json
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from pix2seq_d.parallel import sharding as sharding_lib

ITEM = 'state'
CHECKPOINT_SUBDIR = 'checkpoints'

Path = tuple[str, ...]


# ------------------------------------------------------------------ state <-> nested dict


def is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def leaf_value(leaf: Any) -> Any:
  return leaf.get_value() if is_variable(leaf) else leaf


def _is_key(value: Any) -> bool:
  return jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key)


def flat_state(state: Any) -> list[tuple[Path, Any]]:
  """[(path, leaf)] of a state; leaves are nnx.Variables or arrays / ShapeDtypeStructs."""
  flat = jax.tree_util.tree_flatten_with_path(state, is_leaf=is_variable)[0]
  return [(sharding_lib.path_names(path), leaf) for path, leaf in flat]


def _nest(flat: dict[Path, Any]) -> dict[str, Any]:
  """{('a', 'b'): x} -> {'a': {'b': x}}."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


def _unnest(tree: Any, prefix: Path = ()) -> dict[Path, Any]:
  """{'a': {'b': x}} -> {('a', 'b'): x}; metadata objects and arrays are leaves."""
  if isinstance(tree, dict):
    flat = {}
    for name, child in tree.items():
      flat.update(_unnest(child, prefix + (str(name),)))
    return flat
  return {prefix: tree}


def _storable(value: Any) -> Any:
  """What is written for one leaf: PRNG keys as their uint32 key data."""
  return jax.random.key_data(value) if _is_key(value) else value


def storable_abstract(value: Any) -> jax.ShapeDtypeStruct:
  """The ShapeDtypeStruct (with the leaf's sharding) that `_storable(value)` would have."""
  sharding = getattr(value, 'sharding', None)
  if _is_key(value):
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(value.shape, value.dtype))
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
  return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)


def _rebuild(template_leaf: Any, stored: jax.Array) -> Any:
  """The state leaf for a restored array: key data wrapped back, Variables rebuilt."""
  value = leaf_value(template_leaf)
  if _is_key(value):
    stored = jax.random.wrap_key_data(stored, dtype=value.dtype)
  return template_leaf.replace(value=stored) if is_variable(template_leaf) else stored


def shapes_in_checkpoint(manager: ocp.CheckpointManager, step: int) -> dict[Path, tuple]:
  """{path: shape} of every array saved at `step`, read from metadata only (no array I/O)."""
  folder = epath.Path(manager.directory) / str(step)
  try:
    metadata = manager.item_metadata(step)
    item = metadata[ITEM] if metadata is not None else None
  except KeyError:  # orbax's 'Unknown key' for an item whose folder is gone
    item = None
  except (UnicodeDecodeError, json.JSONDecodeError, OSError) as e:  # garbage in its metadata
    raise ValueError(
      f'{folder} cannot be read as a checkpoint ({type(e).__name__}: {e}). To resume from the '
      f'step before, remove {folder}; to start afresh, use another --workdir.'
    ) from None
  if item is None:
    missing = (
      f'{folder / ITEM} is missing'
      if not (folder / ITEM).exists()
      else f'{folder / ITEM} has no metadata'
    )
    raise ValueError(
      f'{folder} holds no {ITEM!r} item ({missing}): the checkpoint is incomplete or not a '
      f'pix2seq_d checkpoint. To resume from the step before, remove {folder}; to start '
      'afresh, use another --workdir.'
    )
  tree = getattr(item, 'tree', item)
  return {path: tuple(meta.shape) for path, meta in _unnest(tree).items()}


def describe_path(path: Path) -> str:
  return '/'.join(path)


def new_manager(
  directory: epath.Path,
  *,
  keep: int | None = None,
  async_save: bool = True,
  read_only: bool = False,
) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=None if read_only else keep,
    save_interval_steps=0 if read_only else 1,  # what orbax sets for read_only, with a warning
    enable_async_checkpointing=async_save,
    create=not read_only,
    read_only=read_only,
    # Leftovers of a save that crashed midway are never restored; deleting them saves space. A
    # reader never does it: beside a live training run they are the step being written.
    cleanup_tmp_directories=not read_only,
  )
  return ocp.CheckpointManager(
    directory, options=options, item_handlers={ITEM: ocp.PyTreeCheckpointHandler()}
  )


def restore_items(
  manager: ocp.CheckpointManager,
  step: int,
  targets: dict[Path, jax.ShapeDtypeStruct],
  partial: bool,
) -> dict[Path, Any]:
  """Restores the arrays at `targets` (paths -> abstract arrays with shardings) from `step`."""
  target = _nest(targets)
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      **{
        ITEM: ocp.args.PyTreeRestore(
          item=target, restore_args=restore_args, partial_restore=partial
        )
      }
    ),
  )
  return _unnest(restored[ITEM])


# ------------------------------------------------------------------------- the manager


class CheckpointManager:
  """Saves and restores train states under `<workdir>/checkpoints`, keeping the newest `keep`.

  The caller decides when to save (every config.train.checkpoint_every steps, at the end, and on
  preemption); every process must call `save` and `restore_latest` (they are collective).

    manager = CheckpointManager(workdir, keep=config.train.keep_checkpoints)
    restored = manager.restore_latest(sharding.with_shardings(abstract_state, shardings))
    state, start_step = restored if restored else (fresh_state, 0)
    ...
    manager.save(step, state)
    manager.wait_until_finished()
  """

  def __init__(
    self,
    workdir: str | epath.PathLike,
    *,
    keep: int | None = 5,
    async_save: bool = True,
    read_only: bool = False,
  ):
    """Opens (and, unless read-only, creates) `<workdir>/checkpoints`.

    Args:
      workdir: the run's directory, local or gs://.
      keep: how many of the newest steps to keep; None keeps all (ignored when read-only).
      async_save: write files in a background thread (save only blocks for the device-to-host
        copy).
      read_only: restore only: nothing in the workdir is created, deleted or cleaned up, so it
        is safe beside a training run that writes the same workdir (see the module docstring).
    """
    self.workdir = epath.Path(workdir)
    self.directory = self.workdir / CHECKPOINT_SUBDIR
    self.read_only = read_only
    self._manager = new_manager(
      self.directory, keep=keep, async_save=async_save, read_only=read_only
    )

  def all_steps(self) -> list[int]:
    """The steps saved so far (completed ones only), ascending."""
    return sorted(self._manager.all_steps())

  def reload(self) -> list[int]:
    """Reads the completed steps from storage again (another process writes them); returns them."""
    self._manager.reload()
    return self.all_steps()

  def latest_step(self) -> int | None:
    """The newest completed step, or None."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Starts saving `state` as `step`; returns False if that step is already saved.

    Args:
      step: the step number (usually int(state.step)).
      state: the train state (a steps.TrainState of possibly sharded jax arrays).
      force: save even if orbax's save policy would skip this step (the interval is the
        caller's, so this only matters with a custom policy).
    """
    if self.read_only:
      raise PermissionError(f'{self.directory} was opened read-only: step {step} is not saved.')
    if step in self._manager.all_steps():
      return False
    tree = _nest({path: _storable(leaf_value(leaf)) for path, leaf in flat_state(state)})
    return self._manager.save(
      step, args=ocp.args.Composite(**{ITEM: ocp.args.PyTreeSave(tree)}), force=force
    )

  def check_compatible(self, step: int, abstract_state: Any, partial: bool = False) -> None:
    """Raises ValueError if the checkpoint at `step` has other arrays or shapes than the state.

    The message names the first mismatching path with both shapes and the checkpoint directory.
    With `partial`, arrays of the checkpoint that `abstract_state` does not hold are allowed.
    """
    saved = shapes_in_checkpoint(self._manager, step)
    expected = {
      path: storable_abstract(leaf_value(leaf)).shape for path, leaf in flat_state(abstract_state)
    }
    hint = (
      f'The checkpoint in {self.directory} was written by a run with a different model '
      f'(config.model, the task or config.diffusion.self_cond differ). Resume it with '
      f'the config that run used, use a new --workdir, or start from it with '
      f'config.init_from.path={str(self.workdir)!r}.'
    )
    for path, shape in expected.items():
      if path not in saved:
        raise ValueError(
          f'{describe_path(path)} {shape} of the model is not in checkpoint step {step}. {hint}'
        )
      if tuple(saved[path]) != tuple(shape):
        raise ValueError(
          f'{describe_path(path)} has shape {tuple(saved[path])} in checkpoint step '
          f'{step} but {tuple(shape)} in the model. {hint}'
        )
    extra = sorted(set(saved) - set(expected))
    if extra and not partial:
      raise ValueError(
        f'checkpoint step {step} holds {describe_path(extra[0])} {saved[extra[0]]}, '
        f'which the model does not have. {hint}'
      )

  def restore(self, step: int, abstract_state: Any, partial: bool = False) -> Any:
    """Restores `step` onto `abstract_state`'s structure, dtypes and shardings.

    Args:
      step: a saved step.
      abstract_state: the state's tree with jax.ShapeDtypeStruct leaves carrying the target
        shardings (`sharding.with_shardings(jax.eval_shape(init_fn), shardings)`), so each
        process reads only its own shards.
      partial: `abstract_state` holds a part of the saved state, keyed as in the saved one, e.g.
        {'ema_params': ..., 'ema_model_state': ...} for evaluation; only that part is read.

    Returns:
      The restored state, the same structure as `abstract_state`.

    Raises:
      ValueError: when the checkpoint does not match the model (see `check_compatible`).
      FileNotFoundError: the step's folder is gone (a training run deleted it meanwhile).
    """
    self.check_compatible(step, abstract_state, partial=partial)
    flat = flat_state(abstract_state)
    targets = {path: storable_abstract(leaf_value(leaf)) for path, leaf in flat}
    folder = self.directory / str(step)
    try:
      restored = restore_items(self._manager, step, targets, partial=partial)
    except (ValueError, OSError, RuntimeError) as e:  # a deleted or damaged array file
      if not folder.exists():
        raise FileNotFoundError(f'{folder} was deleted while it was being restored.') from e
      raise ValueError(
        f'{folder} cannot be restored: a file of it is missing or damaged '
        f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}). To resume from the '
        f'step before, remove {folder}; to start afresh, use another --workdir.'
      ) from e
    leaves = [_rebuild(leaf, restored[path]) for path, leaf in flat]
    treedef = jax.tree_util.tree_structure(abstract_state, is_leaf=is_variable)
    return jax.tree_util.tree_unflatten(treedef, leaves)

  def restore_latest(self, abstract_state: Any) -> tuple[Any, int] | None:
    """(state, step) of the newest completed checkpoint, or None when there is none yet."""
    step = self.latest_step()
    if step is None:
      return None
    return self.restore(step, abstract_state), step

  def wait_until_finished(self) -> None:
    """Blocks until the background writes are on disk (call before exit and before reading)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending writes and releases the manager's threads."""
    self._manager.wait_until_finished()
    self._manager.close()


def saved_steps(workdir: str | epath.PathLike) -> list[int]:
  """The completed checkpoint steps of a workdir, read from the folder alone.

  Unlike `CheckpointManager(workdir).all_steps()` this opens no manager (which would clean up
  the temporary folders of a run that is writing right now), so other processes can watch a run.
  """
  directory = epath.Path(workdir) / CHECKPOINT_SUBDIR
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())
