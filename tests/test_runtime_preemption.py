"""Signals (runtime/preemption.py): Ctrl-C and SIGTERM stop a run at a safe point, a second one
at once, and nothing half-written survives: the handlers in this process, then real runs."""

import json
import os
import re
import signal
import time

import numpy as np
import pytest
from PIL import Image
from processes import PATIENCE_S, Output, main_command, run, start

from pix2seq_d.runtime import preemption


def test_the_first_signal_is_a_request_and_uninstall_restores_the_handlers():
  previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
  preemption.install_stop_handlers()
  try:
    for signum in (signal.SIGINT, signal.SIGTERM):
      assert not preemption.preemption_requested(0)
      preemption.check_stop('here')  # nothing requested: no exception
      os.kill(os.getpid(), signum)  # no KeyboardInterrupt: only a request
      deadline = time.monotonic() + 5
      while not preemption.stop_requested() and time.monotonic() < deadline:
        time.sleep(0.01)
      assert preemption.preemption_requested(1)
      with pytest.raises(preemption.StopRequested) as stop:
        preemption.check_stop('evaluating step 4 at batch 2')
      name = signal.Signals(signum).name
      assert str(stop.value) == f'{name} received: stopped evaluating step 4 at batch 2.'
      assert stop.value.exit_status == 128 + signum
      preemption.install_stop_handlers()  # a new run in this process starts without a request
  finally:
    preemption.uninstall_stop_handlers()
  assert {s: signal.getsignal(s) for s in previous} == previous
  assert not preemption.preemption_requested(2)


def _steps(workdir):
  folder = workdir / 'checkpoints'
  return (
    sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []
  )


def _temporary(workdir):
  folder = workdir / 'checkpoints'
  return [p.name for p in folder.iterdir() if 'tmp' in p.name] if folder.exists() else []


@pytest.mark.slow
def test_signals_stop_training_compilation_and_evaluation_cleanly(
  tmp_path, shapes_data_dir, jax_cache
):
  workdir = tmp_path / 'run'
  long_run = ('--config.train.num_steps=100000', '--config.train.checkpoint_every=1000')

  # Ctrl-C while the state is built and the step compiled: no crash, nothing saved.
  early = Output(start(main_command(workdir, shapes_data_dir, *long_run, mode='train'), jax_cache))
  early.wait_for('Mesh ')
  early.proc.send_signal(signal.SIGINT)
  code, _ = early.finish(timeout=PATIENCE_S)
  assert code == 0, early.text()[-3000:]
  assert 'Stopping before the first step' in early.text() and 'Fatal Python' not in early.text()
  assert _steps(workdir) == []

  # Ctrl-C during training: the step ends, a complete checkpoint of it is written, status 0
  # (checkpoint_every is 1000: the save is the signal's).
  steady = Output(start(main_command(workdir, shapes_data_dir, *long_run, mode='train'), jax_cache))
  steady.wait_for('train/loss=')
  steady.proc.send_signal(signal.SIGINT)
  code, seconds = steady.finish(timeout=120)
  assert code == 0, steady.text()[-3000:]
  saved = _steps(workdir)
  assert len(saved) == 1 and saved[0] % 1000 and not _temporary(workdir), saved
  print(f'Ctrl-C in training: exited 0 in {seconds:.1f} s with step {saved[0]} saved')

  # Twice: exits at once, status 130, keeping the last complete checkpoint. (The second is sent
  # once the first was handled, while the step's checkpoint is written: signals sent together
  # arrive as one.)
  twice = Output(start(main_command(workdir, shapes_data_dir, *long_run, mode='train'), jax_cache))
  twice.wait_for('train/loss=')
  twice.proc.send_signal(signal.SIGINT)
  twice.wait_for('SIGINT received: stopping', poll=0.02)
  twice.proc.send_signal(signal.SIGINT)
  code, seconds = twice.finish(timeout=60)
  assert code == 130, twice.text()[-3000:]
  assert 'SIGINT received again: exiting now' in twice.text()
  assert saved[0] in _steps(workdir)

  # SIGTERM during the final evaluation stops it within seconds (status 143, no results); the
  # start removed any temporary checkpoint folder the previous exit left.
  last = max(_steps(workdir))
  finish = main_command(
    workdir,
    shapes_data_dir,
    f'--config.train.num_steps={last + 2}',
    '--config.eval.num_examples=0',
    '--config.eval.batch_size=1',
  )
  evaluation = Output(start(finish, jax_cache))
  evaluation.wait_for(f'Evaluating step {last + 2}')
  evaluation.proc.send_signal(signal.SIGTERM)
  code, seconds = evaluation.finish(timeout=120)
  assert code == 143, evaluation.text()[-3000:]
  assert f'SIGTERM received: stopped evaluating step {last + 2}' in evaluation.text()
  assert not (workdir / 'eval_results.json').exists()
  assert last + 2 in _steps(workdir) and not _temporary(workdir)
  print(f'SIGTERM in evaluation: exited 143 after {seconds:.1f} s')


@pytest.mark.slow
def test_sigterm_in_a_folder_predict_keeps_whole_files_of_the_inputs_predicted(
  tmp_path, shapes_data_dir, jax_cache
):
  """SIGTERM while a folder is predicted: exit 143 after the batch, and the inputs predicted so
  far have all their files (panoptic PNG, overlay, and a panoptic.json naming exactly them), as
  the message says; nothing staged is left."""
  workdir = tmp_path / 'run'
  code, log = run(
    main_command(workdir, shapes_data_dir, '--config.train.num_steps=1', mode='train'), jax_cache
  )
  assert code == 0, log[-3000:]
  inputs, out, count = tmp_path / 'inputs', tmp_path / 'out', 60
  inputs.mkdir()
  rng = np.random.default_rng(0)
  for k in range(count):
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), np.uint8)).save(inputs / f'{k:03d}.png')
  predict = Output(
    start(
      main_command(
        workdir,
        shapes_data_dir,
        f'--config.predict.input={inputs}',
        f'--config.predict.output={out}',
        '--config.diffusion.steps=20',  # a slower sampler: the signal lands mid-folder
        mode='predict',
      ),
      jax_cache,
    )
  )
  predict.wait_for(f'Predicted 000 -> {out}', poll=0.02)
  predict.proc.send_signal(signal.SIGTERM)
  code, seconds = predict.finish(timeout=120)
  text = predict.text()
  assert code == 143, text[-3000:]
  stopped = re.search(
    rf'SIGTERM received: stopped predicting after (\d+) of {count} inputs: the files of the '
    rf'(\d+) predicted are written \({out / "panoptic.json"}\); run the same command to predict '
    rf'all {count}\.',
    text,
  )
  assert stopped, text[-3000:]
  done = int(stopped.group(2))
  assert 1 <= done < count and int(stopped.group(1)) == done
  names = [f'{k:03d}.png' for k in range(done)]
  annotations = json.loads((out / 'panoptic.json').read_text())['annotations']
  assert [a['file_name'] for a in annotations] == names
  assert sorted(p.name for p in (out / 'panoptic').iterdir()) == names
  assert sorted(p.name for p in (out / 'overlays').iterdir()) == names
  assert sorted(p.name for p in out.iterdir()) == ['overlays', 'panoptic', 'panoptic.json']
  print(f'SIGTERM in predict: exited 143 after {seconds:.1f} s, {done} of {count} inputs written')
