"""Device mesh, logical-axis rules, and the shardings of the train state and the batch.

The mesh has three axes, built once from `config.mesh`:

  data   pure data parallelism: the batch is split, weights are replicated.
  fsdp   the batch is split AND weights are split (ZeRO-3 / FSDP); XLA all-gathers a weight
         before use and reduce-scatters its gradient.
  model  tensor parallelism: hidden widths (MLP, attention heads, conv output channels) split.

Every weight carries logical axis names in flax NNX's `out_sharding` metadata
(`layers.sharding_metadata`); a rule table maps each name to mesh axes, MaxText style. A
dimension falls back to replicated when its size does not divide over the mesh axes, or when a
mesh axis is already used by another dimension of the same array, so any model runs on any mesh
(just less sharded). That fallback is why `logical_to_spec` is ours: flax's
`nnx.get_partition_spec` under `nnx.logical_axis_rules(rule_pairs())` gives the same specs where
every dimension divides (a test checks it), and an unshardable spec where one does not.

Typical use (loops/state.py builds the train state and jits the steps on top of this):

  mesh = sharding.make_mesh(config.mesh)
  shardings = sharding.state_shardings(jax.eval_shape(init_fn), mesh)
  batch = sharding.make_global_batch(local_batch, mesh)

Nothing here imports the model or the step functions: the specs follow from the logical axis
names the weights carry.
"""

import math
import types
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from pix2seq_d.config import checks

MESH_AXES = ('data', 'fsdp', 'model')
# The batch dimension is split over both data-parallel axes.
BATCH_AXES = ('data', 'fsdp')

# Logical axis name -> mesh axis (a name, a tuple of names, or None = replicated).
# embed / conv_in go to fsdp: the "input" side of every matmul is the FSDP-sharded one, so a
# dense kernel (embed, heads) is split fsdp x model. Norm scales and BatchNorm statistics are tiny
# and read by every device: replicated.
DEFAULT_RULES: Mapping[str, str | tuple[str, ...] | None] = types.MappingProxyType(
  {
    'embed': 'fsdp',
    'mlp': 'model',
    'heads': 'model',
    'conv_in': 'fsdp',
    'conv_out': 'model',
    'norm': None,
  }
)

Rules = Mapping[str, str | tuple[str, ...] | None]


def rule_pairs(rules: Rules | None = None) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
  """The rule table as flax's `nnx.logical_axis_rules` takes it: ((name, mesh axes), ...)."""
  return tuple((DEFAULT_RULES if rules is None else rules).items())


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """The ('data', 'fsdp', 'model') mesh that `config.mesh` describes.

  Args:
    mesh_config: `config.mesh` with integer fields data, fsdp, model; one of them may be -1,
      which takes the devices the others leave.
    devices: the devices to lay out; defaults to all of `jax.devices()`.

  Returns:
    A Mesh of shape (data, fsdp, model) whose axes are all `AxisType.Auto`, so XLA propagates
    shardings through the step (jax >= 0.10 makes Explicit axes by default, on which
    `with_sharding_constraint` and logical partitioning fail).

  Raises:
    ValueError: naming config.mesh.* when the sizes do not multiply to the device count.
  """
  num_devices = len(devices) if devices is not None else jax.device_count()
  sizes = {axis: int(mesh_config[axis]) for axis in MESH_AXES}
  described = ', '.join(f'config.mesh.{axis}={size}' for axis, size in sizes.items())
  checks.check_mesh(sizes)
  fill = [axis for axis, size in sizes.items() if size == -1]
  known = math.prod(size for size in sizes.values() if size != -1)
  if fill:
    if num_devices % known:
      raise ValueError(
        f'{described}: the fixed axes use {known} devices, which does not divide the '
        f'{num_devices} devices available.'
      )
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(
      f'{described}: the mesh needs {math.prod(sizes.values())} devices but {num_devices} are '
      f'available; make the product equal the device count or set one axis to -1.'
    )
  shape = tuple(sizes[axis] for axis in MESH_AXES)
  return jax.make_mesh(
    shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
  )


def logical_to_spec(
  logical_axes: Sequence[str | None],
  shape: Sequence[int],
  mesh: jax.sharding.Mesh,
  rules: Rules | None = None,
) -> PartitionSpec:
  """Maps one array's logical axis names to a PartitionSpec on `mesh`.

  Args:
    logical_axes: one name (or None) per dimension, e.g. ('embed', 'heads').
    shape: the array's shape, same length as `logical_axes`.
    mesh: the device mesh.
    rules: logical name -> mesh axis, tuple of mesh axes or None; defaults to DEFAULT_RULES.

  Returns:
    A PartitionSpec with one entry per dimension. A dimension is replicated (None) when its rule
    is None, its mesh axes all have size 1, its size is not divisible by the product of its mesh
    axes, or one of its mesh axes is already used by an earlier dimension.

  Raises:
    ValueError: when a name has no rule or the lengths differ.
  """
  rules = DEFAULT_RULES if rules is None else rules
  if len(logical_axes) != len(shape):
    raise ValueError(f'logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}.')
  used = set()
  entries = []
  for name, size in zip(logical_axes, shape, strict=True):
    if name is None:
      entries.append(None)
      continue
    if name not in rules:
      raise ValueError(f'logical axis {name!r} has no sharding rule; rules know {sorted(rules)}.')
    target = rules[name]
    mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
    # Size-1 mesh axes shard nothing; leaving them out keeps specs readable.
    mesh_axes = tuple(axis for axis in mesh_axes if mesh.shape[axis] > 1)
    split = math.prod(mesh.shape[axis] for axis in mesh_axes)
    if not mesh_axes or used & set(mesh_axes) or size % split:
      entries.append(None)
      continue
    used.update(mesh_axes)
    entries.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return PartitionSpec(*entries)


def path_names(path: Sequence[Any]) -> tuple[str, ...]:
  """A jax key path as plain strings: (DictKey('params'), SequenceKey(0)) -> ('params', '0')."""
  names = []
  for key in path:
    for attr in ('key', 'idx', 'name'):
      if hasattr(key, attr):
        names.append(str(getattr(key, attr)))
        break
    else:
      names.append(str(key))
  return tuple(names)


def _is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def _value(leaf: Any) -> Any:
  return leaf.get_value() if _is_variable(leaf) else leaf


def _logical_axes(leaf: Any) -> tuple[str | None, ...] | None:
  if not _is_variable(leaf):
    return None
  axes = leaf.get_metadata().get('out_sharding')
  value = leaf.get_value()
  if axes is None or len(axes) != len(getattr(value, 'shape', ())):
    return None
  return tuple(axes)


def state_shardings(
  abstract_state: Any, mesh: jax.sharding.Mesh, rules: Rules | None = None
) -> Any:
  """NamedShardings for every array of a train state.

  Args:
    abstract_state: a pytree (e.g. loops/steps.py's TrainState from `jax.eval_shape`) whose
      leaves are nnx.Variables (inside nnx.State) or plain arrays / ShapeDtypeStructs.
    mesh: the device mesh.
    rules: the logical-axis rule table; defaults to DEFAULT_RULES.

  Returns:
    A pytree of the same structure: each nnx.Variable holds a NamedSharding instead of its value
    (metadata kept, so the tree matches the state for `jax.jit` in/out_shardings), each other
    leaf is a NamedSharding. Params, EMA params and BatchNorm statistics follow their
    `out_sharding` names; optimiser moments carry the metadata of the params they mirror (optax maps
    over the nnx.State), and where a moment has lost it, it takes the sharding of the param
    whose path is a suffix of its own and whose shape equals it. Scalars, RNG keys and counts,
    and everything else are replicated.
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  flat = jax.tree_util.tree_flatten_with_path(abstract_state, is_leaf=_is_variable)[0]

  # Specs of everything with metadata, by path without the top-level field (params / ema_params),
  # for the optimiser leaves that lost theirs.
  by_param_path = {}
  for path, leaf in flat:
    axes = _logical_axes(leaf)
    if axes is not None:
      value = _value(leaf)
      by_param_path[path_names(path)[1:]] = (
        tuple(value.shape),
        logical_to_spec(axes, value.shape, mesh, rules),
      )

  def spec_of(path, leaf) -> PartitionSpec:
    value = _value(leaf)
    shape = tuple(getattr(value, 'shape', ()))
    axes = _logical_axes(leaf)
    if axes is not None:
      return logical_to_spec(axes, shape, mesh, rules)
    names = path_names(path)
    if shape and names and names[0] == 'opt_state':
      for start in range(1, len(names)):
        match = by_param_path.get(names[start:])
        if match is not None and match[0] == shape:
          return match[1]
    return PartitionSpec()

  def to_sharding(path, leaf):
    spec = spec_of(path, leaf)
    sharding = replicated if spec == PartitionSpec() else NamedSharding(mesh, spec)
    return leaf.replace(value=sharding) if _is_variable(leaf) else sharding

  return jax.tree_util.tree_map_with_path(to_sharding, abstract_state, is_leaf=_is_variable)


def with_shardings(abstract_state: Any, shardings: Any) -> Any:
  """Attaches shardings to an abstract state: each leaf becomes ShapeDtypeStruct(..., sharding).

  The result is what `runtime.checkpoints.CheckpointManager.restore_latest` restores onto, so the
  restored arrays are born with these shardings.
  """
  return jax.tree.map(
    lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
    abstract_state,
    shardings,
  )


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Splits the leading (batch) dimension over ('data', 'fsdp'); other dimensions replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  """The devices a batch is split over: mesh data x fsdp."""
  return mesh.shape['data'] * mesh.shape['fsdp']


def check_batch_sizes(config, parallel: int, training: bool = True) -> None:
  """Checks before anything compiles that the batches split over the `parallel` data-parallel
  devices (`data_parallel_size`; the training batch only when `training`).

  Raises:
    ValueError: config.train.batch_size or config.eval.batch_size is not a multiple of the
      data-parallel devices (mesh data x fsdp), or a device's training rows do not divide into
      config.train.microbatches; the message names the field and what would work.
  """
  for field in ('train.batch_size', 'eval.batch_size') if training else ('eval.batch_size',):
    section, name = field.split('.')
    value = config[section][name]
    if value % parallel:
      nearest = max(parallel, value // parallel * parallel)
      raise ValueError(
        f'config.{field}={value}: must be a multiple of the {parallel} data-parallel devices '
        f'(config.mesh.data x config.mesh.fsdp), e.g. {nearest}.'
      )
  rows = config.train.batch_size // parallel
  microbatches = config.train.microbatches
  if training and rows % microbatches:
    raise ValueError(
      f'config.train.microbatches={microbatches}: must divide the {rows} training rows of each '
      f'of the {parallel} data-parallel devices (config.train.batch_size='
      f'{config.train.batch_size}), so that every microbatch is spread over all devices.'
    )


def make_global_batch(
  batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh
) -> dict[str, jax.Array]:
  """Assembles global arrays from this process's part of the batch.

  Args:
    batch: {name: (B_local, ...) numpy array}, this process's rows (the data pipeline yields
      global batch / process count rows per process).
    mesh: the device mesh.

  Returns:
    {name: (B_local * process_count, ...) jax.Array} split over ('data', 'fsdp').

  Raises:
    ValueError: when the global batch does not split evenly over the data-parallel devices.
  """
  sharding = batch_sharding(mesh)
  parallel = data_parallel_size(mesh)
  result = {}
  for name, local in batch.items():
    local = np.asarray(local)
    global_rows = local.shape[0] * jax.process_count()
    if global_rows % parallel:
      raise ValueError(
        f'batch[{name!r}] has {global_rows} rows over all processes, which do not split over '
        f'the {parallel} data-parallel devices (config.mesh.data * config.mesh.fsdp); make '
        f'config.train.batch_size / config.eval.batch_size a multiple of {parallel}.'
      )
    result[name] = jax.make_array_from_process_local_data(sharding, local)
  return result
