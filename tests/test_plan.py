"""--mode=plan (tools/plan.py, data/survey.py): what a run would do, printed before anything is
trained, converted or written; the exit status says whether the run would stop."""

import os
import shutil
import subprocess
import sys

from processes import ROOT, process_env
from step_layout import seeded_rng, step_config, write_step_folder

from pix2seq_d.tools import plan, summary

SAMPLE_ROOT = os.path.join(os.path.dirname(__file__), 'data', 'coco_panoptic_sample')


def _plan(config, workdir):
  lines = []
  ok = plan.plan(config, str(workdir), lines.append)
  text = '\n'.join(lines)
  print(text)
  return ok, text


def test_the_plan_of_the_quick_start_shows_each_section_and_writes_nothing(shapes_config, tmp_path):
  config = shapes_config()
  config.train.learning_rate = 3e-3
  workdir = tmp_path / 'run'
  ok, text = _plan(config, workdir)
  assert ok, text
  assert 'train.learning_rate: 0.0001 -> 0.003' in text  # a difference from the defaults
  params = int(summary.model_summary(config).splitlines()[-1].split()[-1])
  assert f'{params:,} parameters' in text
  assert 'training batch 8: 8 rows per data-parallel device' in text
  assert 'train state' in text and 'kept activations' in text
  # The embedded tiny set: 64 training and 24 test images.
  assert 'shapes/tiny: train 64, test 24' in text
  assert f'starts afresh in {workdir} from random weights' in text
  assert not workdir.exists()


def test_a_coco_folder_with_a_missing_png_is_named_and_the_plan_fails(shapes_config, tmp_path):
  root = tmp_path / 'coco'
  shutil.copytree(SAMPLE_ROOT, root)
  config = shapes_config()
  config.data.name = 'coco_folder'
  config.data.coco_root = str(root)
  config.data.train_split = config.data.eval_split = 'val2017'
  config.model.num_classes = 134
  ok, text = _plan(config, tmp_path / 'run')
  assert ok, text
  assert 'coco_folder: val2017 2 (listed (converted on the first run))' in text
  pngs = sorted((root / 'annotations' / 'panoptic_val2017').iterdir())
  missing = pngs[int(seeded_rng().integers(len(pngs)))]
  missing.unlink()
  ok, text = _plan(config, tmp_path / 'run')
  assert not ok
  assert f'error: {missing}: the panoptic PNG of image' in text
  assert 'plan: errors above; a run would stop' in text
  assert not (tmp_path / 'tfds').exists() and not (tmp_path / 'run').exists()


def test_a_step_folder_is_listed_and_a_missing_map_named(tmp_path):
  rng = seeded_rng()
  root = tmp_path / 'step'
  written = write_step_folder(root, rng)
  config = step_config(root, tmp_path / 'tfds')
  ok, text = _plan(config, tmp_path / 'run')
  assert ok, text
  frames = sum(len(c) for split in written.values() for c, _ in split.values())
  assert f'kitti_step: train 2, val 2 (sequences, {frames} frames' in text
  victim = root / 'panoptic_maps' / 'val' / '0002' / '000003.png'
  victim.unlink()
  ok, text = _plan(config, tmp_path / 'run')
  assert not ok and f'error: {victim}: the panoptic map of frame 000003.png' in text
  assert not (tmp_path / 'tfds').exists()


def test_a_run_resumes_from_its_last_checkpoint_in_the_plan(shapes_config, tmp_path):
  workdir = tmp_path / 'run'
  for step in (5, 10):
    (workdir / 'checkpoints' / str(step)).mkdir(parents=True)
  ok, text = _plan(shapes_config(), workdir)
  assert ok and f'resumes {workdir} from step 10' in text, text


def test_the_plan_command_exits_1_on_an_error_and_creates_no_workdir(tmp_path, jax_cache):
  workdir = tmp_path / 'run'
  command = [
    sys.executable,
    '-m',
    'pix2seq_d.main',
    '--config=configs/shapes.py:tiny',
    f'--workdir={workdir}',
    '--mode=plan',
    f'--config.data.data_dir={tmp_path / "tfds"}',
    '--config.data.name=coco_folder',
    f'--config.data.coco_root={tmp_path / "nowhere"}',
  ]
  done = subprocess.run(
    command, cwd=ROOT, env=process_env(jax_cache), capture_output=True, text=True, timeout=300
  )
  print(done.stdout[-3000:], done.stderr[-3000:])
  assert done.returncode == 1
  assert f"coco_root '{tmp_path / 'nowhere'}' does not exist" in done.stdout
  assert 'model:' in done.stdout and 'checkpoint:' in done.stdout  # the other sections ran
  assert not workdir.exists() and not (tmp_path / 'tfds').exists()
