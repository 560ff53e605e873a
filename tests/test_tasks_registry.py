"""The task registry and what every task declares: names, metrics, and the training batch the
benchmark and memory plans synthesise, equal to what the input pipeline yields."""

import pytest

from configs import shapes
from pix2seq_d.evaluation import registry as evaluators
from pix2seq_d.tasks import registry
from pix2seq_d.tasks.registry import get_task


def test_every_task_is_found_by_its_name_and_feeds_known_evaluators():
  for name, task_class in registry.TASKS.items():
    config = shapes.get_config('video' if task_class.reads_clips else '')
    config.task = name
    task = registry.get_task(config)
    assert task.name == name and task.config is config
    assert task.metrics and set(task.metrics) <= set(evaluators.EVALUATORS)


def test_an_unknown_task_is_named_with_the_known_ones():
  config = shapes.get_config()
  config.task = 'video'
  with pytest.raises(
    ValueError, match="config.task='video': use one of 'panoptic', 'video_panoptic'"
  ):
    registry.get_task(config)


@pytest.mark.parametrize('arg', ['', 'video'])
def test_train_batch_spec_is_what_the_pipeline_yields(shapes_config, arg):
  config = shapes_config(arg)
  task = registry.get_task(config)
  batch = next(get_task(config).train_iterator(process_index=0, process_count=1))
  spec = task.train_batch_spec(config.train.batch_size)
  arrays = {name: value for name, value in batch.items() if name in spec}
  assert set(arrays) == set(spec)
  for name, value in arrays.items():
    assert (value.shape, value.dtype) == (spec[name].shape, spec[name].dtype), name
  channels = 2 * config.diffusion.num_cond_frames if task.reads_clips else 0
  assert task.cond_channels() == 8 * channels  # 8 analog bits per id channel
