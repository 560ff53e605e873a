"""The small files a run keeps in its workdir beside checkpoints/ and the TensorBoard events.

  <workdir>/categories.json     the dataset's categories, so that --mode=predict needs no dataset
  <workdir>/eval_results.json   the latest evaluation on top, every evaluation in 'history'

Both are written whole to a temporary name and renamed (atomic on POSIX and for a single gs://
object): a reader never sees half a file.
"""

import json

from absl import logging
from etils import epath

from pix2seq_d.runtime.json_files import write_json_atomically

CATEGORIES_FILE = 'categories.json'
RESULTS_FILE = 'eval_results.json'


def write_categories(workdir: str, categories) -> None:
  """Stores the run's categories next to its checkpoints, for prediction without the dataset."""
  write_json_atomically(epath.Path(workdir) / CATEGORIES_FILE, list(categories))


def read_categories(workdir: str) -> list[dict]:
  """The categories a training run in `workdir` stored; FileNotFoundError names the file."""
  path = epath.Path(workdir) / CATEGORIES_FILE
  if not path.exists():
    raise FileNotFoundError(f'{path} is missing: is {workdir} the workdir of a training run?')
  return json.loads(path.read_text())


def write_results(workdir: str, record: dict, **details: dict) -> None:
  """Adds `record` to <workdir>/eval_results.json (latest on top, history below).

  `details` are written beside the latest record only, one table of tables per evaluator, e.g.
  pq={'per_class': {class: {...}}} or davis_jf={'per_sequence': {name: {...}}}; their keys
  become strings.
  """
  path = epath.Path(workdir) / RESULTS_FILE
  history = []
  if path.exists():
    try:
      history = json.loads(path.read_text()).get('history', [])
    except (json.JSONDecodeError, AttributeError):
      logging.warning('%s was unreadable; starting a new history.', path)
  history = [h for h in history if h.get('step') != record['step']] + [record]
  details = {name: {str(k): v for k, v in tables.items()} for name, tables in details.items()}
  content = dict(record, **details, history=history)
  write_json_atomically(path, content, indent=2)
