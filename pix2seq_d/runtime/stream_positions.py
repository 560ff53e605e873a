"""Where each process's training stream stood at each checkpoint, so a resume continues it.

A resumed run must not replay the examples and augmentations of the steps before its checkpoint.
The training stream of every process is deterministic and numbered (data/pipeline.py), so the
number after the last batch of step k, saved beside checkpoint k, is all a resume needs:

  <workdir>/stream_positions/<step>/<process>_of_<count>.json   {"position": 1234}

Every process writes its own file when a checkpoint is saved (atomically); files of steps that
are no longer kept are pruned.
"""

import json

from etils import epath

FOLDER = 'stream_positions'


def _path(workdir, step: int, process_index: int, process_count: int) -> epath.Path:
  return epath.Path(workdir) / FOLDER / str(step) / f'{process_index}_of_{process_count}.json'


def save(workdir, step: int, process_index: int, process_count: int, position: int) -> None:
  """Records this process's stream position after step `step`."""
  path = _path(workdir, step, process_index, process_count)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f'{path.name}.tmp'
  tmp.write_text(json.dumps({'position': int(position)}))
  tmp.replace(path)


def load(workdir, step: int, process_index: int, process_count: int) -> int | None:
  """The position saved for `step` by this process of a run with as many processes, or None."""
  path = _path(workdir, step, process_index, process_count)
  try:
    return int(json.loads(path.read_text())['position'])
  except (FileNotFoundError, ValueError, KeyError, TypeError):
    return None


def prune(workdir, keep_steps) -> None:
  """Deletes the positions of every step not in `keep_steps`."""
  folder = epath.Path(workdir) / FOLDER
  if not folder.exists():
    return
  keep = {str(step) for step in keep_steps}
  for entry in folder.iterdir():
    if entry.name not in keep:
      entry.rmtree(missing_ok=True)
