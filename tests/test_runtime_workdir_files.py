"""eval_results.json: a file that cannot be extended is named before anything runs, and kept."""

import json
import multiprocessing

import pytest

from pix2seq_d.runtime import json_files, workdir_files


@pytest.mark.parametrize(
  'text, message',
  [
    ('{"history": [', 'is not valid JSON'),
    ('[{"step": 2}]', "must hold an object with a 'history' list"),
    ('{"history": {"step": 2}}', "must hold an object with a 'history' list"),
    ('{"history": [{"PQ": 0.5}]}', 'history[0] = {"PQ": 0.5} is not a record with an integer'),
    ('{"history": [{"step": "2"}]}', 'is not a record with an integer'),
  ],
)
def test_a_results_file_of_another_shape_is_named_and_kept(tmp_path, text, message):
  path = tmp_path / workdir_files.RESULTS_FILE
  path.write_text(text)
  with pytest.raises(json_files.FileFormatError) as error:
    workdir_files.read_results_history(str(tmp_path))
  assert str(path) in str(error.value) and message in str(error.value)
  with pytest.raises(json_files.FileFormatError):
    workdir_files.write_results(str(tmp_path), {'step': 3, 'PQ': 0.5})
  assert path.read_text() == text  # nothing overwritten


def test_results_keep_one_record_per_step_latest_on_top(tmp_path):
  assert workdir_files.read_results_history(str(tmp_path)) == []
  workdir_files.write_results(str(tmp_path), {'step': 2, 'PQ': 0.1})
  workdir_files.write_results(str(tmp_path), {'step': 4, 'PQ': 0.3}, pq={'per_class': {1: {}}})
  workdir_files.write_results(str(tmp_path), {'step': 2, 'PQ': 0.2})  # step 2 evaluated again
  content = json.loads((tmp_path / workdir_files.RESULTS_FILE).read_text())
  assert content['step'] == 2 and content['PQ'] == 0.2 and 'pq' not in content
  assert [(h['step'], h['PQ']) for h in content['history']] == [(4, 0.3), (2, 0.2)]


def _write_records(workdir: str, first: int, count: int, go) -> None:
  go.wait(60)
  for step in range(first, first + count):
    workdir_files.write_results(workdir, {'step': step, 'PQ': step / 1000})


def test_two_processes_adding_results_at_once_lose_no_record(tmp_path):
  """A training run's evaluation and a follower evaluator write one eval_results.json."""
  count = 150
  context = multiprocessing.get_context('spawn')
  go = context.Event()
  writers = [
    context.Process(target=_write_records, args=(str(tmp_path), first, count, go))
    for first in (1, 1001)
  ]
  for process in writers:
    process.start()
  go.set()
  for process in writers:
    process.join(120)
    assert process.exitcode == 0
  history = workdir_files.read_results_history(str(tmp_path))
  assert sorted(h['step'] for h in history) == [*range(1, 1 + count), *range(1001, 1001 + count)]


def test_tables_never_replace_a_scalar_of_the_same_name(tmp_path):
  workdir_files.write_results(
    str(tmp_path),
    {'step': 2, 'uncertainty_auroc': 0.7, 'given_pixels_kept': 1.0},
    uncertainty_auroc={'levels': [1, 2]},
    given_pixels_kept={},
  )
  content = json.loads((tmp_path / workdir_files.RESULTS_FILE).read_text())
  assert content['uncertainty_auroc'] == 0.7 and content['given_pixels_kept'] == 1.0
  assert content['uncertainty_auroc_details'] == {'levels': [1, 2]}
