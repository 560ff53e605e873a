"""One validation pass over an experiment config, before anything is built or compiled.

Every fact that can be checked from the config alone is checked here, and each error names the
field (`config.a.b=value`) and what to set instead, so a run never fails after minutes of
compilation or hours of training on something that was wrong from the start. The checks only
check: nothing here writes into the config.

  check_config(config, mode)   # raises ValueError; main.py calls it first
  num_classes_of(config, categories, where)   # the class count the dataset (or a run) implies

The task checks its own fields (`Task.check_config`) and says which metrics
(config.eval.metrics) it can produce.
"""

from collections.abc import Sequence
from numbers import Number

from pix2seq_d.diffusion import sampler, schedules
from pix2seq_d.evaluation import registry as evaluators
from pix2seq_d.models import model as p2s
from pix2seq_d.tasks import registry as tasks

# config.data.name values that never read config.data.coco_root (any other name does: a set
# coco_root replaces a TFDS COCO name).
_NOT_COCO = ('shapes', 'shapes_video', 'davis', 'kitti_step', 'shapes_step')


def _fail(field: str, value, why: str) -> None:
  raise ValueError(f'config.{field}={value!r}: {why}')


def _check_pair(config, field: str) -> None:
  """`field` is a (height, width) pair of positive numbers."""
  section, name = field.split('.')
  value = config[section][name]
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
  section, name = field.split('.')
  value = config[section][name]
  if not isinstance(value, Number) or value < minimum:
    _fail(field, value, f'must be >= {minimum}{why}.')


def _check_choice(config, field: str, choices: tuple[str, ...]) -> None:
  value = config
  for name in field.split('.'):
    value = value[name]
  if value not in choices:
    _fail(field, value, f'use one of {", ".join(repr(c) for c in choices)}.')


def _check_metrics(config, task) -> None:
  """config.eval.metrics: a non-empty tuple of evaluator names that the task can produce."""
  metrics = config.eval.metrics
  if isinstance(metrics, str) or not isinstance(metrics, Sequence) or not metrics:
    _fail(
      'eval.metrics',
      metrics,
      f'must be a non-empty tuple of metric names, e.g. --config.eval.metrics="{task.metrics}".',
    )
  unknown = [name for name in metrics if name not in evaluators.EVALUATORS]
  if unknown:
    _fail(
      'eval.metrics',
      tuple(metrics),
      f'no evaluator is named {", ".join(map(repr, unknown))}; the evaluators are '
      f'{", ".join(map(repr, evaluators.EVALUATORS))}.',
    )
  unsupported = [name for name in metrics if name not in task.metrics]
  if unsupported:
    _fail(
      'eval.metrics',
      tuple(metrics),
      f'the task {task.name!r} cannot produce {", ".join(map(repr, unsupported))}; it produces '
      f'{", ".join(map(repr, task.metrics))}.',
    )
  if len(set(metrics)) != len(metrics):
    _fail('eval.metrics', tuple(metrics), 'names a metric more than once.')


def check_config(config, mode: str) -> None:
  """Raises ValueError naming the first field of `config` that cannot work in `mode`.

  Args:
    config: the whole experiment config.
    mode: main.py's --mode ('train', 'eval', 'train_and_eval', 'predict', 'summary', 'plan':
      checked as a training run).
  """
  for field in ('model.image_size', 'model.mask_size', 'data.eval_orig_size'):
    _check_pair(config, field)
  _check_pair(config, 'data.scale_jitter')
  if config.model.num_classes == 0 and mode == 'summary':
    _fail(
      'model.num_classes',
      0,
      '--mode=summary does not read the dataset, so it cannot take '
      'the class count from it; set the number of categories + 1 (void).',
    )
  p2s.validate_model_config(config.model, num_classes_from_data=True)

  for field in ('train.batch_size', 'eval.batch_size', 'diffusion.steps', 'train.microbatches'):
    _check_at_least(config, field, 1)
  if config.train.batch_size % config.train.microbatches:
    _fail(
      'train.microbatches',
      config.train.microbatches,
      f'must divide config.train.batch_size={config.train.batch_size}.',
    )
  # Read in every mode: a positive weight gives the model its class head, so a run's checkpoints
  # restore only with the weight it was trained with.
  _check_at_least(config, 'diffusion.semantic_aux_weight', 0)
  task = tasks.get_task(config)  # names an unknown task
  task.check_config()
  _check_metrics(config, task)
  _check_choice(config, 'data.instance_id_order', ('random', 'shuffle', 'track', 'location'))
  _check_choice(config, 'data.train_resize_method', ('bilinear', 'bicubic'))
  _check_choice(config, 'data.train_crowd', ('void', 'segment'))
  # Read only when sampling (after training): a misspelt name would cost the whole run.
  _check_choice(config, 'diffusion.sampler', tuple(sampler.SAMPLERS))
  _check_choice(config, 'diffusion.schedule', tuple(schedules.SCHEDULES))
  if config.plan.compile and mode != 'plan':
    _fail('plan.compile', True, f'is read by --mode=plan only, not by --mode={mode}.')
  if mode in ('train', 'train_and_eval', 'plan'):
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
    if not config.train.learning_rate > 0:
      _fail('train.learning_rate', config.train.learning_rate, 'must be positive.')
    if not 0 <= config.train.ema_decay < 1:
      _fail('train.ema_decay', config.train.ema_decay, 'must be in [0, 1).')

  if config.eval.follow and mode != 'eval':
    _fail(
      'eval.follow',
      True,
      f'follows a training run from a second job with --mode=eval, not with --mode={mode}.',
    )
  if config.eval.follow:
    _check_at_least(config, 'train.num_steps', 1, ' (the follower stops after that step)')
    if not config.eval.follow_poll_s > 0:
      _fail('eval.follow_poll_s', config.eval.follow_poll_s, 'must be positive (seconds).')
    _check_at_least(config, 'eval.follow_timeout_s', 0, ' (seconds)')

  init = config.init_from
  if init.format not in ('pix2seq_d', 'tf'):
    _fail(
      'init_from.format',
      init.format,
      "use 'pix2seq_d' (a run of ours) or 'tf' (the reference's TF encoder checkpoint).",
    )
  if init.mode not in ('all', 'encoder'):
    _fail('init_from.mode', init.mode, "use 'all' or 'encoder'.")
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

  data = config.data
  unused = []
  if data.coco_root and data.name.split('/')[0] in _NOT_COCO:
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
