"""The small files a run keeps in its workdir beside checkpoints/ and the TensorBoard events.

  <workdir>/categories.json     the dataset's categories, so that --mode=predict needs no dataset
  <workdir>/eval_results.json   the latest evaluation on top, every evaluation in 'history'

Both are written whole to a temporary name and renamed (atomic on POSIX and for a single gs://
object): a reader never sees half a file.
"""

import json
import os

from absl import logging
from etils import epath

CATEGORIES_FILE = 'categories.json'
RESULTS_FILE = 'eval_results.json'


def _write_atomically(path: epath.Path, text: str) -> None:
  tmp = path.parent / f'.{path.name}.tmp-{os.getpid()}'
  tmp.write_text(text)
  tmp.replace(path)


def write_categories(workdir: str, categories) -> None:
  """Stores the run's categories next to its checkpoints, for prediction without the dataset."""
  _write_atomically(epath.Path(workdir) / CATEGORIES_FILE, json.dumps(list(categories)))


def read_categories(workdir: str) -> list[dict]:
  """The categories a training run in `workdir` stored; FileNotFoundError names the file."""
  path = epath.Path(workdir) / CATEGORIES_FILE
  if not path.exists():
    raise FileNotFoundError(f'{path} is missing: is {workdir} the workdir of a training run?')
  return json.loads(path.read_text())


def write_results(workdir: str, record: dict, per_class: dict) -> None:
  """Adds `record` to <workdir>/eval_results.json (latest on top, history below)."""
  path = epath.Path(workdir) / RESULTS_FILE
  history = []
  if path.exists():
    try:
      history = json.loads(path.read_text()).get('history', [])
    except (json.JSONDecodeError, AttributeError):
      logging.warning('%s was unreadable; starting a new history.', path)
  history = [h for h in history if h.get('step') != record['step']] + [record]
  content = dict(record, per_class={str(k): v for k, v in per_class.items()}, history=history)
  _write_atomically(path, json.dumps(content, indent=2))
