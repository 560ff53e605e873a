"""The dataset's part of the one validation pass (config/checks.py asks it through `Registries`):
every config.data field the dataset code reads that can be checked without reading data.

  check_config(config)   # raises ValueError naming the field and its allowed values
"""

from __future__ import annotations

from pix2seq_d.config import checks
from pix2seq_d.data import augment, davis, instance_ids, pipeline, registry


def check_config(config) -> None:
  """Raises ValueError naming the first config.data field the dataset code cannot use."""
  registry.check_name(config)
  registry.check_roots(config)
  data = config.data
  checks.check_choice(
    'data.instance_id_order', data.instance_id_order, instance_ids.INSTANCE_ID_ORDERS
  )
  checks.check_choice('data.train_crowd', data.train_crowd, pipeline.CROWD_RULES)
  checks.check_choice('data.train_resize_method', data.train_resize_method, augment.RESIZE_METHODS)
  if data.name == 'davis':
    davis.check_resolution(config)
