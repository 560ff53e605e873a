"""config.task -> its Task (tasks/base.py): the one place that reads config.task.

  task = registry.get_task(config)
  name, metrics = registry.check_config(config)   # part of config/checks.py's pass

Every other module asks the task.
"""

from __future__ import annotations

from pix2seq_d.tasks import base, panoptic, video_panoptic

TASKS: dict[str, type[base.Task]] = {
  task.name: task for task in (panoptic.ImagePanoptic, video_panoptic.VideoPanoptic)
}


def get_task(config) -> base.Task:
  """The task config.task names, holding `config`.

  Raises:
    ValueError: no task has that name (the message lists the tasks).
  """
  if config.task not in TASKS:
    raise ValueError(
      f'config.task={config.task!r}: use one of {", ".join(repr(name) for name in TASKS)}.'
    )
  return TASKS[config.task](config)


def check_config(config) -> tuple[str, tuple[str, ...]]:
  """The task's part of the one validation pass (config/checks.py asks it through `Registries`):
  raises ValueError for an unknown config.task or a field the task cannot use.

  Returns:
    (the task's name, the metrics (config.eval.metrics) it can produce).
  """
  task = get_task(config)
  task.check_config()
  return task.name, task.metrics
