"""JSON files read with messages that name the file, line and field, and written atomically.

Used for every JSON file the project reads from a user (COCO panoptic annotations, prediction
files) or writes for one (categories, evaluation results, the evaluators' outputs). A file a
command is told to write (`--output_json`) is checked before the work that fills it
(`check_output_path`) and written whole or not at all (`write_output_json`).
"""

import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any

from etils import epath


class FileFormatError(ValueError):
  """A file that is not what it must be (invalid JSON, a missing field); the message says where."""


class OutputPathError(ValueError):
  """A file that cannot be written where a flag asks for it; the message names flag and path."""


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


def write_text_atomically(path: str | epath.PathLike, text: str) -> None:
  """Writes `text` to a temporary name beside `path`, then renames it over `path`.

  The folder is created when missing; on any failure the temporary file is removed and `path`
  is left as it was. A rename is atomic on POSIX and for a single gs:// object, so a reader never
  sees half a file.
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f'.{path.name}.tmp-{os.getpid()}'
  try:
    tmp.write_text(text)
    tmp.replace(path)
  except BaseException:
    if tmp.exists():
      tmp.unlink()
    raise


def write_json_atomically(path: str | epath.PathLike, data, indent: int | None = None) -> None:
  """Writes `data` as JSON whole or not at all (`write_text_atomically`)."""
  write_text_atomically(path, json.dumps(data, indent=indent))


def check_output_path(path: str, flag: str) -> None:
  """Raises OutputPathError unless a file can be written at `path`, before any work that fills it.

  `path` must not be a folder, and its nearest existing ancestor must be a folder this process
  can create files in (missing folders below it are created by the write). The test creates and
  removes a file there: permission bits do not tell (root, read-only mounts, /proc). Paths with
  a scheme (gs://) are left to the write.

  Args:
    path: the file to be written.
    flag: names it in the message ('--output_json').
  """
  if '://' in str(path):
    return
  target = os.path.abspath(path)
  if os.path.isdir(target):
    raise OutputPathError(f'{flag}={path}: is a folder, not a file')
  folder = os.path.dirname(target)
  while not os.path.lexists(folder):
    folder = os.path.dirname(folder)
  if not os.path.isdir(folder):
    raise OutputPathError(f'{flag}={path}: {folder} is a file, not a folder')
  try:
    handle, probe = tempfile.mkstemp(prefix='.write-test-', dir=folder)
  except OSError as e:
    why = e.strerror or e
    raise OutputPathError(f'{flag}={path}: cannot create files in {folder} ({why})') from None
  os.close(handle)
  os.unlink(probe)


def write_output_json(path: str, data, flag: str, indent: int | None = 1) -> None:
  """`write_json_atomically`, with a failure raised as OutputPathError naming `flag` and `path`
  (the file is then as it was)."""
  try:
    write_json_atomically(path, data, indent=indent)
  except OSError as e:
    raise OutputPathError(f'{flag}={path}: cannot be written ({e}); it is as it was') from None
