"""pix2seq_d.data: TFDS sources, augmentation and per-host tf.data input pipelines.

TensorFlow is only the input pipeline here: importing this package hides every GPU / TPU from it
so that JAX keeps the accelerators (TF would otherwise reserve their memory).
"""

import tensorflow as tf
from absl import logging


def _hide_accelerators_from_tf() -> None:
  for device_type in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], device_type)
    except (RuntimeError, ValueError) as e:  # devices already initialised / type unknown.
      logging.warning('Could not hide %s devices from TensorFlow: %s', device_type, e)


_hide_accelerators_from_tf()
