"""Checkpoints: orbax CheckpointManager, resume onto sharded state, partial init, preemption.

Layout: `<workdir>/checkpoints/<step>/state/...`, one orbax PyTree item 'state' per step. The train
state is saved as a nested dict of arrays keyed by its tree path (step, params/..., model_state/...,
opt_state/1/0/mu/..., ema_params/..., ema_model_state/...), so the files do not depend on how a
flax or optax version registers its pytree classes; PRNG keys are stored as their uint32 key data.

Saving is asynchronous: `save` returns once the arrays are copied off the accelerator, and the
files are written in a background thread. Orbax writes a step into a temporary directory and
renames it (or, on gs://, writes a commit marker) when complete, so a crash never leaves a
half-written step that `restore_latest` would pick up. Call `wait_until_finished()` before exit.

Paths are `etils.epath` paths, so workdirs may be local or gs://.

Preemption: `install_preemption_handler()` turns SIGTERM into a flag that the train loop polls
with `preemption_requested(step)` at every step, then saves and exits. With several processes the
flag is not used (hosts could see it at different steps and then disagree on when to save);
instead `jax.distributed`'s preemption sync service, which catches SIGTERM itself, tells every
host at the same step (`multihost_utils.reached_preemption_sync_point`).
"""

import dataclasses
import signal
import threading
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from pix2seq_d import sharding as sharding_lib

ITEM = 'state'
CHECKPOINT_SUBDIR = 'checkpoints'
# Parameter subtrees that 'encoder' partial init copies (with their BatchNorm statistics).
ENCODER_MODULES = ('resnet', 'encoder', 'fusion')
# The denoiser's first 1x1 conv: its input channels are [x_t bits | fused features | extra], so a
# model with more extra channels (video, self-conditioning) grows only this kernel's Cin.
GROWABLE_KERNEL = ('denoiser', 'conv_in', 'kernel')

Path = tuple[str, ...]


# ------------------------------------------------------------------ state <-> nested dict


def _is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def _leaf_value(leaf: Any) -> Any:
  return leaf.get_value() if _is_variable(leaf) else leaf


def _is_key(value: Any) -> bool:
  return jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key)


def _flat(state: Any) -> list[tuple[Path, Any]]:
  """[(path, leaf)] of a state; leaves are nnx.Variables or arrays / ShapeDtypeStructs."""
  flat = jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_variable)[0]
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


def _storable_abstract(value: Any) -> jax.ShapeDtypeStruct:
  """The ShapeDtypeStruct (with the leaf's sharding) that `_storable(value)` would have."""
  sharding = getattr(value, 'sharding', None)
  if _is_key(value):
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(value.shape, value.dtype))
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
  return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)


def _rebuild(template_leaf: Any, stored: jax.Array) -> Any:
  """The state leaf for a restored array: key data wrapped back, Variables rebuilt."""
  value = _leaf_value(template_leaf)
  if _is_key(value):
    stored = jax.random.wrap_key_data(stored, dtype=value.dtype)
  return template_leaf.replace(value=stored) if _is_variable(template_leaf) else stored


def _shapes_in_checkpoint(manager: ocp.CheckpointManager, step: int) -> dict[Path, tuple]:
  """{path: shape} of every array saved at `step`, read from metadata only (no array I/O)."""
  metadata = manager.item_metadata(step)
  item = metadata[ITEM] if metadata is not None else None
  if item is None:
    raise ValueError(f'{manager.directory}/{step} holds no {ITEM!r} item; is it a pix2seq_d '
                     f'checkpoint?')
  tree = getattr(item, 'tree', item)
  return {path: tuple(meta.shape) for path, meta in _unnest(tree).items()}


def _describe(path: Path) -> str:
  return '/'.join(path)


def _new_manager(directory: epath.Path, *, keep: int | None = None, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=None if read_only else keep,
    enable_async_checkpointing=async_save,
    create=not read_only,
    read_only=read_only,
    # Leftovers of a save that crashed midway are never restored; deleting them saves space.
    cleanup_tmp_directories=not read_only,
  )
  return ocp.CheckpointManager(directory, options=options,
                               item_handlers={ITEM: ocp.PyTreeCheckpointHandler()})


def _restore_items(manager: ocp.CheckpointManager, step: int,
                   targets: dict[Path, jax.ShapeDtypeStruct], partial: bool) -> dict[Path, Any]:
  """Restores the arrays at `targets` (paths -> abstract arrays with shardings) from `step`."""
  target = _nest(targets)
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  restored = manager.restore(step, args=ocp.args.Composite(**{ITEM: ocp.args.PyTreeRestore(
    item=target, restore_args=restore_args, partial_restore=partial)}))
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

  def __init__(self, workdir: str | epath.PathLike, *, keep: int | None = 5,
               async_save: bool = True):
    """Opens (and creates) `<workdir>/checkpoints`.

    Args:
      workdir: the run's directory, local or gs://.
      keep: how many of the newest steps to keep; None keeps all.
      async_save: write files in a background thread (save only blocks for the device-to-host
        copy).
    """
    self.workdir = epath.Path(workdir)
    self.directory = self.workdir / CHECKPOINT_SUBDIR
    self._manager = _new_manager(self.directory, keep=keep, async_save=async_save)

  def all_steps(self) -> list[int]:
    """The steps saved so far (completed ones only), ascending."""
    return sorted(self._manager.all_steps())

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
    if step in self._manager.all_steps():
      return False
    tree = _nest({path: _storable(_leaf_value(leaf)) for path, leaf in _flat(state)})
    return self._manager.save(
      step, args=ocp.args.Composite(**{ITEM: ocp.args.PyTreeSave(tree)}), force=force)

  def check_compatible(self, step: int, abstract_state: Any) -> None:
    """Raises ValueError if the checkpoint at `step` has other arrays or shapes than the state.

    The message names the first mismatching path with both shapes and the checkpoint directory.
    """
    saved = _shapes_in_checkpoint(self._manager, step)
    expected = {path: _storable_abstract(_leaf_value(leaf)).shape
                for path, leaf in _flat(abstract_state)}
    hint = (f'The checkpoint in {self.directory} was written by a run with a different model '
            f'(config.model, config.task or config.diffusion.self_cond differ). Resume it with '
            f'the config that run used, use a new --workdir, or start from it with '
            f'config.init_from.path={str(self.workdir)!r}.')
    for path, shape in expected.items():
      if path not in saved:
        raise ValueError(f'{_describe(path)} {shape} of the model is not in checkpoint step '
                         f'{step}. {hint}')
      if tuple(saved[path]) != tuple(shape):
        raise ValueError(f'{_describe(path)} has shape {tuple(saved[path])} in checkpoint step '
                         f'{step} but {tuple(shape)} in the model. {hint}')
    extra = sorted(set(saved) - set(expected))
    if extra:
      raise ValueError(f'checkpoint step {step} holds {_describe(extra[0])} {saved[extra[0]]}, '
                       f'which the model does not have. {hint}')

  def restore(self, step: int, abstract_state: Any) -> Any:
    """Restores `step` onto `abstract_state`'s structure, dtypes and shardings.

    Args:
      step: a saved step.
      abstract_state: the state's tree with jax.ShapeDtypeStruct leaves carrying the target
        shardings (`sharding.with_shardings(jax.eval_shape(init_fn), shardings)`), so each
        process reads only its own shards.

    Returns:
      The restored state, the same structure as `abstract_state`.

    Raises:
      ValueError: when the checkpoint does not match the model (see `check_compatible`).
    """
    self.check_compatible(step, abstract_state)
    flat = _flat(abstract_state)
    targets = {path: _storable_abstract(_leaf_value(leaf)) for path, leaf in flat}
    restored = _restore_items(self._manager, step, targets, partial=False)
    leaves = [_rebuild(leaf, restored[path]) for path, leaf in flat]
    treedef = jax.tree_util.tree_structure(abstract_state, is_leaf=_is_variable)
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


# ------------------------------------------------------------------ init from another run


def saved_steps(workdir: str | epath.PathLike) -> list[int]:
  """The completed checkpoint steps of a workdir, read from the folder alone.

  Unlike `CheckpointManager(workdir).all_steps()` this opens no manager (which would clean up
  the temporary folders of a run that is writing right now), so other processes can watch a run.
  """
  directory = epath.Path(workdir) / CHECKPOINT_SUBDIR
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def resolve_checkpoint(path: str | epath.PathLike) -> tuple[epath.Path, int]:
  """(checkpoint root, step) for config.init_from.path.

  Accepts a workdir (its newest step), its `checkpoints` directory (the newest step) or one step
  directory (`<workdir>/checkpoints/<step>`).

  Raises:
    FileNotFoundError: when nothing there looks like a checkpoint.
  """
  path = epath.Path(path)
  if (path / ITEM).exists() and path.name.isdigit():
    return path.parent, int(path.name)
  root = path / CHECKPOINT_SUBDIR if (path / CHECKPOINT_SUBDIR).exists() else path
  step = None
  if root.exists():
    manager = _new_manager(root, read_only=True)
    step = manager.latest_step()
    manager.close()
  if step is None:
    raise FileNotFoundError(
      f'config.init_from.path={str(path)!r} is neither a workdir with checkpoints, a checkpoints '
      f'directory nor a checkpoint step directory.')
  return root, step


def _copy_plan(state: Any, saved: dict[Path, tuple], mode: str, source: str,
               where: str) -> tuple[dict[Path, Path], dict[Path, Path]]:
  """Which fresh-state paths take which checkpoint paths: (same shape, grown conv)."""
  copy, grow = {}, {}
  for path, leaf in _flat(state):
    field, rest = path[0], path[1:]
    if field == 'params':
      src = (source,) + rest
    elif field == 'model_state' and isinstance(leaf, nnx.BatchStat):
      src = ('ema_model_state' if source == 'ema_params' else 'model_state',) + rest
    else:
      continue  # EMA follows the copied params; optimiser, step and RNG streams start fresh.
    if mode == 'encoder' and rest[0] not in ENCODER_MODULES:
      continue
    shape = tuple(_leaf_value(leaf).shape)
    if src not in saved:
      if mode == 'encoder':
        raise ValueError(f'{_describe(src)} {shape} is not in {where}; config.init_from.mode='
                         f"'encoder' needs a checkpoint of a model with the same encoder.")
      continue  # a module the old model did not have keeps its fresh init.
    old = tuple(saved[src])
    if old == shape:
      copy[path] = src
    elif (mode == 'all' and rest == GROWABLE_KERNEL and len(old) == 4 and old[:2] == shape[:2]
          and old[3] == shape[3] and old[2] < shape[2]):
      grow[path] = src
    else:
      raise ValueError(
        f'{_describe(path)} has shape {shape} in the model but {old} in {where} '
        f"(config.init_from.mode={mode!r}). Only the denoiser's input conv may grow (more "
        f"input channels); use mode 'encoder' to copy just the image encoder.")
  return copy, grow


def restore_for_init(path: str | epath.PathLike, state: Any, mode: str = 'all',
                     from_ema: bool = False) -> Any:
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
    from_ema: copy the checkpoint's EMA weights (and EMA statistics) instead of the raw ones.

  Returns:
    `state` with the copied weights; ema_params / ema_model_state equal to the new params /
    model state; optimiser state and step untouched (fresh).

  Raises:
    ValueError: for an unknown mode or any other mismatch (naming the path and both shapes).
    FileNotFoundError: when `path` holds no checkpoint.
  """
  if mode not in ('all', 'encoder'):
    raise ValueError(f"config.init_from.mode={mode!r}: use 'all' or 'encoder'.")
  root, step = resolve_checkpoint(path)
  where = f'checkpoint {root}/{step} (config.init_from.path={str(path)!r})'
  manager = _new_manager(root, read_only=True)
  saved = _shapes_in_checkpoint(manager, step)
  source = 'ema_params' if from_ema else 'params'
  copy, grow = _copy_plan(state, saved, mode, source, where)
  fresh = dict(_flat(state))

  targets = {}
  for dst, src in copy.items():
    targets[src] = _storable_abstract(_leaf_value(fresh[dst]))
  for dst, src in grow.items():
    value = _leaf_value(fresh[dst])
    # A small 1x1 kernel: read it replicated; the grown one gets the fresh sharding below.
    grown_sharding = value.sharding
    if isinstance(grown_sharding, jax.sharding.NamedSharding):
      grown_sharding = jax.sharding.NamedSharding(grown_sharding.mesh,
                                                  jax.sharding.PartitionSpec())
    targets[src] = jax.ShapeDtypeStruct(saved[src], value.dtype, sharding=grown_sharding)
  restored = _restore_items(manager, step, targets, partial=True)
  manager.close()

  updates = {dst: restored[src] for dst, src in copy.items()}
  for dst, src in grow.items():
    value = _leaf_value(fresh[dst])
    old = restored[src]
    kernel = jnp.zeros(value.shape, value.dtype).at[:, :, :old.shape[2], :].set(old)
    updates[dst] = jax.device_put(kernel, value.sharding)
  logging.info('init_from %s (mode %s): copied %d arrays, grew %s, kept %d fresh.', where, mode,
               len(copy), [_describe(p) for p in grow],
               sum(1 for p in fresh if p[0] == 'params') - len(copy) - len(grow))

  def replace(path, leaf):
    new = updates.get(sharding_lib.path_names(path))
    if new is None:
      return leaf
    return leaf.replace(value=new) if _is_variable(leaf) else new

  state = jax.tree_util.tree_map_with_path(replace, state, is_leaf=_is_variable)
  # Copies, not aliases: the train step donates the whole state, and a buffer donated twice fails.
  return dataclasses.replace(
    state, ema_params=jax.tree.map(jnp.copy, state.params),
    ema_model_state=jax.tree.map(jnp.copy, state.model_state))


# ------------------------------------------------------------------------------ preemption

_preemption_flag = threading.Event()
_previous_handler: Any = None
_installed = False


def _on_sigterm(signum, frame):
  del frame
  if _preemption_flag.is_set():
    # A second SIGTERM: the loop did not get to save in time; die as the sender intended.
    uninstall_preemption_handler()
    signal.raise_signal(signum)
    return
  logging.warning('SIGTERM received: saving a checkpoint and exiting at the end of this step.')
  _preemption_flag.set()


def install_preemption_handler() -> bool:
  """Turns SIGTERM into a flag that `preemption_requested` reports (single process only).

  Call from the main thread. With several processes this installs nothing and returns False:
  `jax.distributed` then runs its preemption sync service, which catches SIGTERM itself and
  agrees on one step for all hosts (a Python handler would replace its handler).

  Returns:
    True when the handler was installed.
  """
  global _previous_handler, _installed
  if jax.process_count() > 1:
    return False
  if not _installed:
    _previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    _installed = True
  _preemption_flag.clear()
  return True


def uninstall_preemption_handler() -> None:
  """Restores the SIGTERM handler that was there before and clears the flag."""
  global _previous_handler, _installed
  if _installed:
    signal.signal(signal.SIGTERM,
                  _previous_handler if _previous_handler is not None else signal.SIG_DFL)
    _installed = False
    _previous_handler = None
  _preemption_flag.clear()


def preemption_requested(step: int) -> bool:
  """Whether the train loop should save now and exit; call at every step on every process.

  Single process: True once SIGTERM arrived (after `install_preemption_handler`). Several
  processes: True on every host at the same step, once any host was told to stop
  (`multihost_utils.reached_preemption_sync_point`, the check orbax's `reached_preemption` uses).
  """
  if _preemption_flag.is_set():
    return True
  if jax.process_count() > 1:
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # jax_enable_preemption_service is off: no preemption notices.
      return False
  return False

