"""The small files a run keeps in its workdir beside checkpoints/ and the TensorBoard events.

  <workdir>/categories.json     the dataset's categories, so that --mode=predict needs no dataset
  <workdir>/eval_results.json   the latest evaluation on top, every evaluation in 'history'
  <workdir>/config.json         the config of the latest training start, so that a resumed run
                                can say what changed

Both are written whole to a temporary name and renamed (atomic on POSIX and for a single gs://
object): a reader never sees half a file. A training run's evaluations and a follower evaluator
(`--mode=eval --config.eval.follow=True`) may add records to one eval_results.json: on a local
folder each read-modify-write holds an exclusive lock on <workdir>/.eval_results.lock, so
neither record is lost.
"""

import contextlib
import fcntl
import json
import os

from etils import epath

from pix2seq_d.runtime.json_files import FileFormatError, write_json_atomically

CATEGORIES_FILE = 'categories.json'
RESULTS_FILE = 'eval_results.json'
RESULTS_LOCK_FILE = '.eval_results.lock'
CONFIG_FILE = 'config.json'


@contextlib.contextmanager
def _results_lock(workdir: str):
  """Holds the exclusive lock of eval_results.json while the block runs (local folders only;
  gs:// has no file locks, and a follower there writes its own workdir's file alone)."""
  if '://' in os.fspath(workdir):
    yield
    return
  os.makedirs(os.fspath(workdir), exist_ok=True)
  with open(os.path.join(os.fspath(workdir), RESULTS_LOCK_FILE), 'a') as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
    yield


def write_categories(workdir: str, categories) -> None:
  """Stores the run's categories next to its checkpoints, for prediction without the dataset."""
  write_json_atomically(epath.Path(workdir) / CATEGORIES_FILE, list(categories))


def write_config(workdir: str, config_json: str) -> None:
  """Stores the config a training run starts with (`ConfigDict.to_json_best_effort()`)."""
  write_json_atomically(epath.Path(workdir) / CONFIG_FILE, json.loads(config_json), indent=2)


def read_config(workdir: str) -> dict | None:
  """The config the last training start stored, or None (none yet, or unreadable)."""
  path = epath.Path(workdir) / CONFIG_FILE
  try:
    content = json.loads(path.read_text())
  except (FileNotFoundError, ValueError):
    return None
  return content if isinstance(content, dict) else None


def read_categories(workdir: str) -> list[dict]:
  """The categories a training run in `workdir` stored; FileNotFoundError names the file."""
  path = epath.Path(workdir) / CATEGORIES_FILE
  if not path.exists():
    raise FileNotFoundError(f'{path} is missing: is {workdir} the workdir of a training run?')
  return json.loads(path.read_text())


def read_results_history(workdir: str) -> list[dict]:
  """The evaluations recorded in <workdir>/eval_results.json, oldest first ([] without one).

  The training loop reads it at start, so that a file it could not extend stops the run before
  anything is trained or evaluated, rather than after an evaluation whose results it would lose.

  Raises:
    FileFormatError: the file is not JSON, or not an object whose 'history' is a list of
      records each with an integer 'step'; the message names the file and what to do.
  """
  path = epath.Path(workdir) / RESULTS_FILE
  if not path.exists():
    return []
  advice = f'move {path} away (a new one is started) or fix it'
  try:
    content = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise FileFormatError(f'{path} is not valid JSON ({e}): {advice}.') from None
  history = content.get('history', []) if isinstance(content, dict) else None
  if not isinstance(history, list):
    raise FileFormatError(
      f"{path} must hold an object with a 'history' list of evaluation records, not "
      f'{json.dumps(content)[:80]}: {advice}.'
    )
  for k, entry in enumerate(history):
    if not isinstance(entry, dict) or type(entry.get('step')) is not int:
      raise FileFormatError(
        f'{path}: history[{k}] = {json.dumps(entry)[:80]} is not a record with an integer '
        f"'step': {advice}."
      )
  return history


def write_results(workdir: str, record: dict, **details: dict) -> None:
  """Adds `record` to <workdir>/eval_results.json (latest on top, history below).

  `details` are written beside the latest record only, one table of tables per evaluator, e.g.
  pq={'per_class': {class: {...}}} or davis_jf={'per_sequence': {name: {...}}}; their keys
  become strings.

  Raises:
    FileFormatError: the existing file cannot be extended (`read_results_history`); it is kept.
  """
  path = epath.Path(workdir) / RESULTS_FILE
  # Each evaluator's tables under its name, or '<name>_details' where the name is one of the
  # record's scalars (uncertainty_auroc); evaluators without tables add nothing.
  details = {
    f'{name}_details' if name in record else name: {str(k): v for k, v in tables.items()}
    for name, tables in details.items()
    if tables
  }
  with _results_lock(workdir):
    history = read_results_history(workdir)
    history = [h for h in history if h['step'] != record['step']] + [record]
    content = dict(record, **details, history=history)
    write_json_atomically(path, content, indent=2)
