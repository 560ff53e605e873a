"""One validation pass over an experiment config, before anything is built or compiled.

Every fact that can be checked from the config alone is checked here, and each error names the
field (`config.a.b=value`) and what to set instead (an enumerated field lists its allowed
values), so a run never fails after minutes of compilation or hours of training on something
that was wrong from the start. The checks only check: nothing here writes into the config.

  check_config(config, mode, known)   # raises ValueError; main.py calls it first
  num_classes_of(config, categories, where)   # the class count the dataset (or a run) implies
  check_choice(field, value, choices)   # the one message of an enumerated field

config/ sits below the code it configures and imports none of it: what the other layers know
(task names and their own checks, evaluator, sampler, schedule and learning-rate schedule
names, the model's and the dataset's own checks) reaches this pass as a `Registries`, built
once by loops/registries.py (`registries.check_config(config, mode)` is the usual call). Library
functions that take a field's value directly (a sampler name, a crowd rule) guard it with
`check_choice`, so each rule's message is written once.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from numbers import Number
from typing import Any


@dataclasses.dataclass(frozen=True)
class Registries:
  """What the code that runs a config knows, asked by `check_config` without importing it.

  Attributes:
    check_task: config -> (task name, the metrics it can produce); raises ValueError for an
      unknown task name (listing the tasks) or a field the task cannot use.
    evaluators: the evaluator names config.eval.metrics may hold.
    samplers: config.diffusion.sampler's values.
    schedules: config.diffusion.schedule's values.
    lr_schedules: config.train.lr_schedule's values.
    check_model: config.model -> None; raises ValueError for sizes (or dtypes, attention, remat
      policies) that cannot build a model; config.model.num_classes = 0 passes (from the data).
    check_data: config -> None; raises ValueError for what only the dataset code knows (the
      '/config' suffix of a generated set's config.data.name, TFDS davis's resolutions). Called
      last, in the modes that read a dataset: it imports TensorFlow, which --mode=summary never
      needs.
  """

  check_task: Callable[[Any], tuple[str, Sequence[str]]]
  evaluators: Sequence[str]
  samplers: Sequence[str]
  schedules: Sequence[str]
  lr_schedules: Sequence[str]
  check_model: Callable[[Any], None]
  check_data: Callable[[Any], None]


# config.data's fields of fixed values: the config's own schema, kept here and read by the data
# code, rather than asked of data/: every module there imports TensorFlow (seconds of start-up
# and its log lines before the error; absent from the GPU image), which this pass must not need.
DATA_GENERATED = ('shapes', 'shapes_video', 'shapes_step')  # embedded sets: name[/config]
DATA_FOLDERS = ('coco_folder', 'davis', 'kitti_step')  # a folder of one's own (data.*_root)
DATA_TFDS_COCO = 'coco/2017_panoptic'
NOT_COCO = DATA_GENERATED + ('davis', 'kitti_step')  # names that never read data.coco_root
INSTANCE_ID_ORDERS = ('random', 'shuffle', 'track', 'location')
CROWD_RULES = ('void', 'segment')
RESIZE_METHODS = ('bilinear', 'bicubic')


def _fail(field: str, value, why: str) -> None:
  raise ValueError(f'config.{field}={value!r}: {why}')


def check_choice(field: str, value, choices: Sequence[str]) -> None:
  """Raises ValueError naming config.`field`, its value and the allowed `choices` unless
  `value` is one of them: the one message of every enumerated field, here and in the library
  functions that take such a value directly."""
  if value not in choices:
    _fail(field, value, f'use one of {", ".join(repr(c) for c in choices)}.')


def check_scale_range(scale_range) -> None:
  """config.data.scale_jitter: (min, max) with 0 < min <= max (the augmentation's guard too)."""
  low, high = (float(v) for v in scale_range)
  if low <= 0 or high < low:
    _fail('data.scale_jitter', tuple(scale_range), 'must be 0 < min <= max.')


def check_mesh(sizes: Mapping[str, int]) -> None:
  """config.mesh {axis: size}: each a positive size, at most one -1 (it takes the devices the
  others leave); how many devices there are is checked when the mesh is built."""
  described = ', '.join(f'config.mesh.{axis}={size}' for axis, size in sizes.items())
  fills = [axis for axis, size in sizes.items() if size == -1]
  if len(fills) > 1 or any(size == 0 or size < -1 for size in sizes.values()):
    raise ValueError(
      f'{described}: each must be a positive size, and at most one may be -1 (fill).'
    )


def check_data_name(config) -> None:
  """config.data.name: a generated set (with any '/config'; its suffix is the data code's to
  check), a folder's name or the TFDS COCO name."""
  name = config.data.name
  if not name:
    raise ValueError('config.data.name is empty; use e.g. "shapes" or "coco/2017_panoptic".')
  if name.partition('/')[0] not in DATA_GENERATED:
    names = (DATA_TFDS_COCO, *DATA_FOLDERS, *(f'{base}[/config]' for base in DATA_GENERATED))
    check_choice('data.name', name, names)


def _check_data(config) -> None:
  """config.data's names, roots and fields of fixed values."""
  data = config.data
  check_data_name(config)
  unused = []
  if data.coco_root and data.name.split('/')[0] in NOT_COCO:
    unused.append(('coco_root', 'coco_folder'))
  if data.davis_root and data.name != 'davis':
    unused.append(('davis_root', 'davis'))
  if data.step_root and data.name != 'kitti_step':
    unused.append(('step_root', 'kitti_step'))
  for field, name in unused:
    _fail(
      f'data.{field}',
      data[field],
      f'is not read with config.data.name={data.name!r}. Set --config.data.name={name} to '
      f'use that folder, or leave config.data.{field} empty.',
    )
  check_choice('data.instance_id_order', data.instance_id_order, INSTANCE_ID_ORDERS)
  check_choice('data.train_crowd', data.train_crowd, CROWD_RULES)
  check_choice('data.train_resize_method', data.train_resize_method, RESIZE_METHODS)


# config.data.name -> the folder field it cannot read without (davis reads TFDS without one).
REQUIRED_ROOTS = {'coco_folder': 'coco_root', 'kitti_step': 'step_root'}
READS_DATA = ('train', 'eval', 'train_and_eval')  # the modes that read config.data's dataset


def _check_inputs(config, mode: str) -> None:
  """What `mode` reads must be named: a dataset of one's own its folder, --mode=predict its
  input and output; predict's fields set in another mode would be ignored, so they are refused.
  (Whether the paths exist is checked by the code that reads them, still before any step.)"""
  data = config.data
  root = REQUIRED_ROOTS.get(data.name)
  if mode in READS_DATA and root and not data[root]:
    _fail(
      f'data.{root}',
      '',
      f'config.data.name={data.name!r} reads a folder of your own: set --config.data.{root}=ROOT.',
    )
  for field, what in (('input', 'PATH'), ('output', 'DIR'), ('given', None)):
    value = config.predict[field]
    if mode == 'predict' and what and not value:
      _fail(f'predict.{field}', value, f'--mode=predict needs --config.predict.{field}={what}.')
    if mode != 'predict' and value:
      _fail(f'predict.{field}', value, f'is read by --mode=predict only, not by --mode={mode}.')


def _value(config, field: str):
  value = config
  for name in field.split('.'):
    value = value[name]
  return value


def _check_pair(config, field: str) -> None:
  """`field` is a (height, width) pair of positive numbers."""
  value = _value(config, field)
  is_pair = (
    isinstance(value, Sequence)
    and not isinstance(value, (str, bytes))
    and len(value) == 2
    and all(isinstance(v, Number) and v > 0 for v in value)
  )
  if not is_pair:
    _fail(
      field,
      value,
      f'must be a pair of positive numbers (height, width), e.g. --config.{field}="(64, 64)".',
    )


def _check_at_least(config, field: str, minimum: float, why: str = '') -> None:
  value = _value(config, field)
  if not isinstance(value, Number) or value < minimum:
    _fail(field, value, f'must be >= {minimum}{why}.')


def _check_interval(config, field: str, low: float, high: float, closed_high: bool) -> None:
  """`field` lies in [low, high] (closed_high) or [low, high)."""
  value = _value(config, field)
  inside = (
    isinstance(value, Number) and low <= value and (value <= high if closed_high else value < high)
  )
  if not inside:
    _fail(field, value, f'must be in [{low}, {high}{"]" if closed_high else ")"}.')


def _check_positive(config, field: str, why: str = '') -> None:
  value = _value(config, field)
  if not isinstance(value, Number) or not value > 0:
    _fail(field, value, f'must be positive{why}.')


# Read in every mode (sampling reads the diffusion fields; evaluation and prediction the data's).
_AT_LEAST_ANY_MODE = (
  ('train.batch_size', 1),
  ('eval.batch_size', 1),
  ('diffusion.steps', 1),
  ('train.microbatches', 1),
  ('diffusion.td', 0),
  ('diffusion.num_cond_frames', 0),
  ('data.video_window', 1),
  ('data.video_clips_interleaved', 1),
  ('eval.num_examples', 0),
  ('eval.min_pixels', 0),
  ('eval.num_image_summaries', 0),
  # A positive weight gives the model its class head, so a run's checkpoints restore only with
  # the weight it was trained with.
  ('diffusion.semantic_aux_weight', 0),
)
# Probabilities (closed [0, 1]) and the exponential average's decay ([0, 1)).
_FRACTIONS = (
  'diffusion.self_cond_rate',
  'diffusion.frames_dropout',
  'data.color_jitter_prob',
  'data.grayscale_prob',
)


def _check_metrics(config, task_name: str, task_metrics: Sequence[str], known: Registries) -> None:
  """config.eval.metrics: a non-empty tuple of evaluator names that the task can produce."""
  metrics = config.eval.metrics
  if isinstance(metrics, str) or not isinstance(metrics, Sequence) or not metrics:
    _fail(
      'eval.metrics',
      metrics,
      f'must be a non-empty tuple of metric names, e.g. --config.eval.metrics="{task_metrics}".',
    )
  unknown = [name for name in metrics if name not in known.evaluators]
  if unknown:
    _fail(
      'eval.metrics',
      tuple(metrics),
      f'no evaluator is named {", ".join(map(repr, unknown))}; the evaluators are '
      f'{", ".join(map(repr, known.evaluators))}.',
    )
  unsupported = [name for name in metrics if name not in task_metrics]
  if unsupported:
    _fail(
      'eval.metrics',
      tuple(metrics),
      f'the task {task_name!r} cannot produce {", ".join(map(repr, unsupported))}; it produces '
      f'{", ".join(map(repr, task_metrics))}.',
    )
  if len(set(metrics)) != len(metrics):
    _fail('eval.metrics', tuple(metrics), 'names a metric more than once.')


def _check_training(config) -> None:
  """The fields only training reads."""
  _check_at_least(config, 'train.num_steps', 1)
  for field in ('train.log_every', 'train.checkpoint_every', 'train.image_summary_every'):
    _check_at_least(config, field, 1, ' (every how many steps)')
  _check_at_least(
    config,
    'train.keep_checkpoints',
    1,
    ': the newest N checkpoints are kept and older ones deleted, so 0 would '
    'delete every checkpoint of the run',
  )
  for field in ('train.warmup_steps', 'train.eval_every', 'data.max_skips_in_a_row'):
    _check_at_least(config, field, 0)
  for field in ('train.end_lr_factor', 'train.weight_decay'):
    _check_at_least(config, field, 0)
  _check_positive(config, 'train.learning_rate')
  # A clip norm of 0 scales every gradient to 0: the run would never learn.
  _check_positive(config, 'train.grad_clip_norm')
  _check_positive(config, 'train.eps')
  for field in ('train.ema_decay', 'train.b1', 'train.b2'):
    _check_interval(config, field, 0, 1, closed_high=False)


def _check_follower(config, mode: str) -> None:
  """config.eval.follow and its fields (--mode=eval following a training run)."""
  if config.eval.follow and mode != 'eval':
    _fail(
      'eval.follow',
      True,
      f'follows a training run from a second job with --mode=eval, not with --mode={mode}.',
    )
  if config.eval.follow:
    _check_at_least(config, 'train.num_steps', 1, ' (the follower stops after that step)')
    _check_positive(config, 'eval.follow_poll_s', ' (seconds)')
    _check_at_least(config, 'eval.follow_timeout_s', 0, ' (seconds)')


def _check_init_from(config) -> None:
  init = config.init_from
  if init.format not in ('pix2seq_d', 'tf'):
    _fail(
      'init_from.format',
      init.format,
      "use one of 'pix2seq_d' (a run of ours), 'tf' (the reference's TF encoder checkpoint).",
    )
  check_choice('init_from.mode', init.mode, INIT_MODES)
  if not init.path and (init.format, init.mode) != ('pix2seq_d', 'all'):
    _fail(
      'init_from.path',
      '',
      f'config.init_from.format={init.format!r} / mode={init.mode!r} are set but nothing is '
      'loaded without --config.init_from.path=CHECKPOINT.',
    )
  if init.format == 'tf' and init.mode != 'encoder':
    _fail(
      'init_from.mode',
      init.mode,
      'a TF checkpoint of the reference holds its image encoder '
      'only: set --config.init_from.mode=encoder with --config.init_from.format=tf.',
    )


# config.init_from.mode: every array of the same shape, or the image encoder's.
INIT_MODES = ('all', 'encoder')


def check_config(config, mode: str, known: Registries) -> None:
  """Raises ValueError naming the first field of `config` that cannot work in `mode`.

  Fields that need nothing but the config come first, the model's, the task's and the
  dataset's own checks (asked through `known`) after them.

  Args:
    config: the whole experiment config.
    mode: main.py's --mode ('train', 'eval', 'train_and_eval', 'predict', 'summary', 'plan':
      checked as a training run).
    known: what the code knows (`Registries`; loops/registries.py builds it).
  """
  for field in ('model.image_size', 'model.mask_size', 'data.eval_orig_size', 'data.scale_jitter'):
    _check_pair(config, field)
  check_scale_range(config.data.scale_jitter)
  for field, minimum in _AT_LEAST_ANY_MODE:
    _check_at_least(config, field, minimum)
  for field in _FRACTIONS:
    _check_interval(config, field, 0, 1, closed_high=True)
  _check_positive(config, 'diffusion.b_scale')
  check_mesh({axis: config.mesh[axis] for axis in config.mesh})
  if config.train.batch_size % config.train.microbatches:
    _fail(
      'train.microbatches',
      config.train.microbatches,
      f'must divide config.train.batch_size={config.train.batch_size}.',
    )
  # Read only when sampling (after training): a misspelt name would cost the whole run.
  check_choice('diffusion.sampler', config.diffusion.sampler, known.samplers)
  check_choice('diffusion.schedule', config.diffusion.schedule, known.schedules)
  check_choice('train.lr_schedule', config.train.lr_schedule, known.lr_schedules)
  if config.plan.compile and mode != 'plan':
    _fail('plan.compile', True, f'is read by --mode=plan only, not by --mode={mode}.')
  if mode in ('train', 'train_and_eval', 'plan'):
    _check_training(config)
  _check_follower(config, mode)
  _check_init_from(config)
  _check_data(config)
  _check_inputs(config, mode)

  if config.model.num_classes == 0 and mode == 'summary':
    _fail(
      'model.num_classes',
      0,
      '--mode=summary does not read the dataset, so it cannot take '
      'the class count from it; set the number of categories + 1 (void).',
    )
  known.check_model(config.model)
  task_name, task_metrics = known.check_task(config)
  _check_metrics(config, task_name, task_metrics, known)
  if mode != 'summary':  # the dataset's code (TensorFlow) is never needed for a summary
    known.check_data(config)


def num_classes_of(config, categories, where: str) -> int:
  """The one rule for config.model.num_classes: len(categories) + 1 (void), or 0 = derive it.

  Args:
    config: the experiment config (not changed).
    categories: the dataset's (or a trained run's) category list.
    where: names the categories' origin in the error message.

  Returns:
    len(categories) + 1, the value config.model.num_classes must hold (config/data_facts.py
    applies it when the config says 0).

  Raises:
    ValueError: config.model.num_classes is set to another value.
  """
  num_classes = len(categories) + 1
  if config.model.num_classes not in (0, num_classes):
    _fail(
      'model.num_classes',
      config.model.num_classes,
      f'{where} has {len(categories)} categories + void = {num_classes}; set '
      f'--config.model.num_classes={num_classes} (or 0 to take it from the data).',
    )
  return num_classes
