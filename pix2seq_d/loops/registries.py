"""The `Registries` that config/checks.py asks, built from the code that runs a config.

config/ imports none of the layers it configures; this module (above them all but main and
tools) tells it what they know, so a config is checked in one pass before anything is built:

  registries.check_config(config, mode)   # main.py, tools/sampling_cost.py, tests

The dataset's check is imported when called: data/ brings in TensorFlow, which --mode=summary
(and the GPU image) never needs.
"""

from __future__ import annotations

from pix2seq_d.config import checks
from pix2seq_d.diffusion import sampler, schedules
from pix2seq_d.evaluation import registry as evaluators
from pix2seq_d.loops import steps
from pix2seq_d.models import model as p2s
from pix2seq_d.tasks import registry as tasks


def _check_model(model_config) -> None:
  """config.model; num_classes = 0 passes (it is taken from the dataset before the model is
  built, and --mode=summary refuses it in config/checks.py)."""
  p2s.validate_model_config(model_config, num_classes_from_data=True)


def _check_data(config) -> None:
  from pix2seq_d.data import checks as data_checks

  data_checks.check_config(config)


KNOWN = checks.Registries(
  check_task=tasks.check_config,
  evaluators=tuple(evaluators.EVALUATORS),
  samplers=tuple(sampler.SAMPLERS),
  schedules=tuple(schedules.SCHEDULES),
  lr_schedules=steps.LR_SCHEDULES,
  check_model=_check_model,
  check_data=_check_data,
)


def check_config(config, mode: str) -> None:
  """`checks.check_config(config, mode, KNOWN)`: raises ValueError naming the first field of
  `config` that cannot work in `mode`."""
  checks.check_config(config, mode, KNOWN)
