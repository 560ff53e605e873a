"""Bad input to the commands users run: each ends in bounded time with an error that names it.

Every case starts the real command (`python -m pix2seq_d.main`, or the PQ CLI) as a process, as a
user would, and asserts a non-zero exit within the timeout (no hang) and the expected message
among the last lines of the output (what the user reads). Run with `-s` to see the table:
  case | exit status | seconds | the message.
"""

import json
import os
import shutil
import sys
import time

import pytest
from processes import main_command, run

SAMPLE_ROOT = os.path.join(os.path.dirname(__file__), 'data', 'coco_panoptic_sample')
SAMPLE_JSON = os.path.join(SAMPLE_ROOT, 'annotations', 'panoptic_val2017.json')
TIMEOUT_S = 300
# The message must be among this many last lines of the output.
TAIL_LINES = 12


def _coco_root(tmp_path, damage=None):
  """A copy of the COCO sample; `damage(root, annotation)` edits files, or returns a new JSON."""
  root = tmp_path / 'coco'
  shutil.copytree(SAMPLE_ROOT, root)
  json_path = root / 'annotations' / 'panoptic_val2017.json'
  annotation = json.loads(json_path.read_text())
  if damage is not None:
    edited = damage(root, annotation)
    if isinstance(edited, dict):
      json_path.write_text(json.dumps(edited))
  return root


def _folder_args(root, eval_orig_size=(640, 640), num_classes=0):
  """Overrides that train the tiny shapes model on a COCO-format folder (val2017 both ways).

  (A tuple field given twice on the command line is concatenated by ml_collections, so each
  override appears once.)
  """
  return [
    '--config.data.name=coco_folder',
    f'--config.data.coco_root={root}',
    '--config.data.train_split=val2017',
    '--config.data.eval_split=val2017',
    f'--config.model.num_classes={num_classes}',
    f'--config.data.eval_orig_size={eval_orig_size}',
  ]


def _break_images(root, annotation):
  for image in annotation['images']:
    (root / 'val2017' / image['file_name']).write_bytes(b'\xff\xd8 not a JPEG')


def _predict_inputs(tmp_path, names):
  folder = tmp_path / 'inputs'
  folder.mkdir()
  for name in names:
    shutil.copy(os.path.join(SAMPLE_ROOT, 'val2017', '000000439180.jpg'), folder / name)
  return folder


def _categories_only(workdir):
  """A workdir with the categories.json of a training run (the shapes set's) and nothing else:
  what --mode=predict reads first, before its inputs and any weight."""
  from pix2seq_d.data import shapes
  from pix2seq_d.runtime import workdir_files

  workdir.mkdir()
  workdir_files.write_categories(str(workdir), shapes.CATEGORIES)
  return workdir


def _pq_args(tmp_path, damage):
  """PQ CLI arguments: the sample's gt as predictions, damaged by `damage(pred_json, folder)`."""
  folder = tmp_path / 'pred'
  shutil.copytree(os.path.join(SAMPLE_ROOT, 'annotations', 'panoptic_val2017'), folder)
  pred_json = tmp_path / 'pred.json'
  shutil.copy(SAMPLE_JSON, pred_json)
  damage(pred_json, folder)
  return [
    sys.executable,
    '-m',
    'pix2seq_d.evaluation.pq',
    '--gt_json',
    SAMPLE_JSON,
    '--pred_json',
    str(pred_json),
    '--pred_folder',
    str(folder),
  ]


def _a_file(tmp_path):
  path = tmp_path / 'a_file'
  path.write_text('not a folder')
  return path


def _no_get_config(tmp_path):
  path = tmp_path / 'my_config.py'
  path.write_text('import ml_collections\nCONFIG = ml_collections.ConfigDict()\n')
  return path


def _checkpoint_folder(workdir, step):
  """`workdir` as a run that reached `step` leaves it (as far as the step folders go)."""
  (workdir / 'checkpoints' / str(step)).mkdir(parents=True)
  return workdir


def _results_file(workdir, text):
  """`workdir` holding an eval_results.json of `text`."""
  workdir.mkdir(parents=True)
  (workdir / 'eval_results.json').write_text(text)
  return workdir


def _first_png(folder):
  return sorted(folder.iterdir())[0]


# name -> (function (tmp_path, data_dir) -> command, fragment of the expected message).
CASES = {
  # The config, checked before anything is built.
  'keep_checkpoints=0': (
    lambda t, d: main_command(t / 'run', d, '--config.train.keep_checkpoints=0'),
    'config.train.keep_checkpoints=0: must be >= 1',
  ),
  'checkpoint_every=0': (
    lambda t, d: main_command(t / 'run', d, '--config.train.checkpoint_every=0'),
    'config.train.checkpoint_every=0: must be >= 1',
  ),
  'log_every=0': (
    lambda t, d: main_command(t / 'run', d, '--config.train.log_every=0'),
    'config.train.log_every=0: must be >= 1',
  ),
  'scalar image_size': (
    lambda t, d: main_command(t / 'run', d, '--config.model.image_size=64'),
    'config.model.image_size=(64,): must be a pair',
  ),
  'mask_size not dividing image_size': (
    lambda t, d: main_command(t / 'run', d, '--config.model.mask_size=(48, 48)'),
    'must divide config.model.image_size',
  ),
  'num_classes=300': (
    lambda t, d: main_command(t / 'run', d, '--config.model.num_classes=300'),
    'config.model.num_classes=300 does not fit',
  ),
  'negative learning rate': (
    lambda t, d: main_command(t / 'run', d, '--config.train.learning_rate=-1.0'),
    'config.train.learning_rate=-1.0: must be positive',
  ),
  'misspelt sampler': (
    lambda t, d: main_command(t / 'run', d, '--config.diffusion.sampler=ddin'),
    "config.diffusion.sampler='ddin': use one of 'ddim', 'ddpm'.",
  ),
  'unknown field': (
    lambda t, d: main_command(t / 'run', d, '--config.train.bogus=1'),
    "--config.train.bogus: the config has no field 'bogus'",
  ),
  'misspelt field': (
    lambda t, d: main_command(t / 'run', d, '--config.trian.num_steps=1'),
    "did you mean 'train'?",
  ),
  'coco_root with data.name=shapes': (
    lambda t, d: main_command(
      t / 'run', d, '--config.data.coco_root=/data/coco', '--config.data.name=shapes'
    ),
    'Set --config.data.name=coco_folder',
  ),
  'summary with num_classes=0': (
    lambda t, d: main_command(t / 'run', d, '--config.model.num_classes=0', mode='summary'),
    '--mode=summary does not read the dataset',
  ),
  'no --config': (
    lambda t, d: [sys.executable, '-m', 'pix2seq_d.main', f'--workdir={t}'],
    '--config=configs/NAME.py is required',
  ),
  'workdir is a file': (lambda t, d: main_command(_a_file(t) / 'run', d), 'cannot be written'),
  'video task on image data': (
    lambda t, d: main_command(
      t / 'run', d, '--config.task=video_panoptic', '--config.eval.metrics=("davis_jf",)'
    ),
    "config.task='video_panoptic' does not fit",
  ),
  # The data, checked at start.
  'missing coco_root': (
    lambda t, d: main_command(t / 'run', d, *_folder_args(t / 'nowhere')),
    'does not exist or is not a folder',
  ),
  'coco_root without the JSON': (
    lambda t, d: main_command(
      t / 'run',
      d,
      *_folder_args(
        _coco_root(t, lambda r, a: os.remove(r / 'annotations' / 'panoptic_val2017.json'))
      ),
    ),
    'annotations/panoptic_val2017.json',
  ),
  'invalid JSON': (
    lambda t, d: main_command(
      t / 'run',
      d,
      *_folder_args(
        _coco_root(
          t, lambda r, a: (r / 'annotations' / 'panoptic_val2017.json').write_text('{"images": [')
        )
      ),
    ),
    'is not valid JSON: Expecting value (line 1, column 13)',
  ),
  'JSON without segments_info': (
    lambda t, d: main_command(
      t / 'run',
      d,
      *_folder_args(
        _coco_root(t, lambda r, a: {**a, 'annotations': [{'image_id': 1, 'file_name': 'x.png'}]})
      ),
    ),
    "lacks the key(s) ['segments_info']",
  ),
  'images larger than eval_orig_size': (
    lambda t, d: main_command(t / 'run', d, *_folder_args(SAMPLE_ROOT, (64, 64))),
    'Set --config.data.eval_orig_size="(427, 640)"',
  ),
  'num_classes of another dataset': (
    lambda t, d: main_command(t / 'run', d, *_folder_args(SAMPLE_ROOT, num_classes=6)),
    'config.model.num_classes=6: dataset',
  ),
  'every image broken': (
    lambda t, d: main_command(
      t / 'run',
      d,
      *_folder_args(_coco_root(t, _break_images)),
      '--config.data.max_skips_in_a_row=5',
      mode='train',
    ),
    '5 training examples in a row are broken',
  ),
  'missing davis_root': (
    lambda t, d: main_command(
      t / 'run',
      d,
      '--config.data.name=davis',
      f'--config.data.davis_root={t / "no_davis"}',
      config='configs/shapes.py:video',
    ),
    'no_davis',
  ),
  # Runs and workdirs.
  'config file without get_config': (
    lambda t, d: [
      *main_command(t / 'run', d)[:3],
      f'--config={_no_get_config(t)}',
      f'--workdir={t / "run"}',
    ],
    'the file defines no get_config()',
  ),
  'num_steps below the latest checkpoint': (
    lambda t, d: main_command(_checkpoint_folder(t / 'run', 8), d, '--config.train.num_steps=4'),
    'config.train.num_steps=4: ',
  ),
  'eval_results.json of another shape': (
    lambda t, d: main_command(_results_file(t / 'run', '[{"step": 2}]'), d),
    "eval_results.json must hold an object with a 'history' list",
  ),
  "microbatches not dividing a device's rows": (
    lambda t, d: main_command(t / 'run', d, '--config.train.microbatches=8', mode='train'),
    'config.train.microbatches=8: must divide config.train.batch_size=4',
  ),
  'eval of an empty workdir': (
    lambda t, d: main_command(t / 'run', d, mode='eval'),
    'no checkpoint in',
  ),
  'predict without input': (
    lambda t, d: main_command(t / 'run', d, mode='predict'),
    "config.predict.input='': --mode=predict needs --config.predict.input=PATH",
  ),
  'predict on images sharing a stem': (
    lambda t, d: main_command(
      _categories_only(t / 'run'),
      d,
      f'--config.predict.input={_predict_inputs(t, ["a.jpg", "a.png"])}',
      f'--config.predict.output={t / "out"}',
      mode='predict',
    ),
    "share one: {'a': ['a.jpg', 'a.png']}",
  ),
  'predict from a workdir that never trained': (
    lambda t, d: main_command(
      t / 'run',
      d,
      f'--config.predict.input={_predict_inputs(t, ["a.jpg"])}',
      f'--config.predict.output={t / "out"}',
      mode='predict',
    ),
    'categories.json is missing',
  ),
  # The PQ command.
  'PQ: invalid prediction JSON': (
    lambda t, d: _pq_args(t, lambda j, f: j.write_text(j.read_text()[:-9])),
    'is not valid JSON',
  ),
  'PQ: JSON without annotations': (
    lambda t, d: _pq_args(t, lambda j, f: j.write_text('{"categories": []}')),
    "lacks the key(s) ['annotations']",
  ),
  'PQ: corrupt PNG': (
    lambda t, d: _pq_args(t, lambda j, f: _first_png(f).write_bytes(b'\x89PNG broken')),
    'cannot be decoded as a PNG',
  ),
  'PQ: missing PNG folder': (
    lambda t, d: _pq_args(t, lambda j, f: shutil.rmtree(f)),
    "with predicted segmentations doesn't exist",
  ),
}


# Refused before the run starts: the workdir is not even created.
BEFORE_THE_RUN = (
  'predict without input',
  'keep_checkpoints=0',
  'checkpoint_every=0',
  'log_every=0',
  'scalar image_size',
  'mask_size not dividing image_size',
  'num_classes=300',
  'negative learning rate',
  'misspelt sampler',
  'unknown field',
  'misspelt field',
  'coco_root with data.name=shapes',
  'summary with num_classes=0',
  "microbatches not dividing a device's rows",
  'config file without get_config',
)


@pytest.mark.parametrize('name', list(CASES))
def test_bad_input_ends_with_an_error_that_names_it(name, tmp_path, shapes_data_dir, jax_cache):
  make_command, expected = CASES[name]
  command = make_command(tmp_path, shapes_data_dir)
  start = time.time()
  code, log = run(command, jax_cache, timeout=TIMEOUT_S)
  seconds = time.time() - start
  tail = '\n'.join(log.strip().splitlines()[-TAIL_LINES:])
  last = log.strip().splitlines()[-1] if log.strip() else ''
  print(f'| {name} | {code} | {seconds:.1f} | {last[:160]} |')
  assert code != 0, log[-3000:]
  assert expected in tail, tail
  if name in BEFORE_THE_RUN:
    assert not (tmp_path / 'run').exists()
    assert 'Traceback' not in log and len(log.strip().splitlines()) == 1, log[-3000:]
