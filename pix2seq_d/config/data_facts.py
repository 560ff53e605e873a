"""Facts that come from the data, applied to a copy of the config in one visible place.

The config checks (checks.py) only check. What a config leaves to the dataset, today the class
count (config.model.num_classes = 0: the categories + void), is returned by a check and set here,
once, by the loop that has read the dataset (or a trained run's categories.json):

  config = data_facts.apply(config, info.categories, where=f'dataset {source.name!r}')
"""

from absl import logging

from pix2seq_d.config import checks


def apply(config, categories, where: str):
  """`config`, or a copy of it with config.model.num_classes taken from `categories`.

  Args:
    config: the experiment config (not changed).
    categories: the dataset's (or a trained run's) category list.
    where: names the categories' origin in messages.

  Raises:
    ValueError: config.model.num_classes is set and differs (`checks.num_classes_of`).
  """
  num_classes = checks.num_classes_of(config, categories, where)
  if config.model.num_classes == num_classes:
    return config
  resolved = config.copy_and_resolve_references()
  resolved.model.num_classes = num_classes
  logging.info(
    'config.model.num_classes=0: using %d from %s (%d categories + void).',
    num_classes,
    where,
    len(categories),
  )
  return resolved
