"""The dataset's part of the one validation pass (config/checks.py asks it through `Registries`):
what only the dataset code knows and can check without reading data. It imports TensorFlow, so
the pass calls it last (config/checks.py checks config.data's names, roots and enumerated
fields itself).

  check_config(config)   # raises ValueError naming the field and its allowed values
"""

from __future__ import annotations

from pix2seq_d.data import davis, registry


def check_config(config) -> None:
  """Raises ValueError naming config.data.name's unknown '/config' suffix, or a resolution that
  TFDS davis lacks."""
  registry.check_name(config)
  if config.data.name == 'davis':
    davis.check_resolution(config)
