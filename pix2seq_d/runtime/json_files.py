"""JSON files read with messages that name the file, line and field, and written atomically.

Used for every JSON file the project reads from a user (COCO panoptic annotations, prediction
files) or writes for one (categories, evaluation results, the evaluators' outputs).
"""

import json
import os
from collections.abc import Sequence
from typing import Any

from etils import epath


class FileFormatError(ValueError):
  """A file that is not what it must be (invalid JSON, a missing field); the message says where."""


def load_json(path: str, what: str, required: Sequence[str] = ()) -> Any:
  """Reads a JSON file; errors name the file (and the line and column of a syntax error).

  Args:
    path: the file.
    what: what the file is, for messages ('ground truth', 'prediction', ...).
    required: top-level keys the file must have (it must then be an object).

  Raises:
    FileNotFoundError: the file does not exist.
    FileFormatError: the file is not valid JSON, or lacks a required key.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{what} JSON file {path} does not exist')
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise FileFormatError(
      f'{what} JSON file {path} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})'
    ) from None
  except UnicodeDecodeError as e:
    raise FileFormatError(f'{what} JSON file {path} is not UTF-8 text ({e.reason})') from None
  if required:
    if not isinstance(data, dict):
      raise FileFormatError(
        f'{what} JSON file {path} must hold an object with {list(required)}, '
        f'not a {type(data).__name__}'
      )
    missing = [key for key in required if key not in data]
    if missing:
      raise FileFormatError(f'{what} JSON file {path} lacks the key(s) {missing}')
  return data


def require_keys(record: Any, keys: Sequence[str], where: str) -> None:
  """Raises FileFormatError naming `where` when `record` is not a dict holding `keys`."""
  if not isinstance(record, dict):
    raise FileFormatError(f'{where}: expected an object with {list(keys)}, got {record!r:.80}')
  missing = [key for key in keys if key not in record]
  if missing:
    raise FileFormatError(f'{where}: {record!r:.120} lacks the key(s) {missing}')


def write_json_atomically(path: str | epath.PathLike, data, indent: int | None = None) -> None:
  """Writes `data` as JSON to a temporary name beside `path`, then renames it over `path`.

  The folder is created when missing; on any failure the temporary file is removed and `path`
  is left as it was. A rename is atomic on POSIX and for a single gs:// object, so a reader never
  sees half a file.
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f'.{path.name}.tmp-{os.getpid()}'
  try:
    tmp.write_text(json.dumps(data, indent=indent))
    tmp.replace(path)
  except BaseException:
    if tmp.exists():
      tmp.unlink()
    raise
