"""--mode=eval beside a live training run: the follower evaluates every checkpoint once, changes
nothing the trainer owns, and stops after the final step, on a signal, or when the trainer is gone.

Real processes on one workdir (the trainer and the follower), as a user runs them.
"""

import collections
import json
import re
import signal
import time

import jax
import orbax.checkpoint as ocp
import pytest
from processes import PATIENCE_S, Output, main_command, start
from tensorboard.backend.event_processing import event_file_loader

from pix2seq_d.runtime import checkpoints

NUM_STEPS, EVERY = 120, 10


def _follower(workdir, data_dir, *overrides):
  return main_command(
    workdir,
    data_dir,
    '--config.eval.follow=True',
    '--config.eval.follow_poll_s=0.2',
    f'--config.train.num_steps={NUM_STEPS}',
    *overrides,
    mode='eval',
  )


def _evaluated_steps(text: str) -> collections.Counter:
  return collections.Counter(int(s) for s in re.findall(r'Evaluating step (\d+):', text))


def _tensorboard_steps(workdir, tag: str) -> list[int]:
  steps = []
  for path in sorted(workdir.glob('events.out.tfevents.*')):
    for event in event_file_loader.EventFileLoader(str(path)).Load():
      if event.HasField('summary'):
        steps += [int(event.step) for v in event.summary.value if v.tag == tag]
  return sorted(steps)


@pytest.mark.slow
def test_a_follower_beside_training_evaluates_every_checkpoint_once(
  tmp_path, shapes_data_dir, jax_cache
):
  workdir = tmp_path / 'run'
  trainer = Output(
    start(
      main_command(
        workdir,
        shapes_data_dir,
        f'--config.train.num_steps={NUM_STEPS}',
        f'--config.train.checkpoint_every={EVERY}',
        '--config.train.keep_checkpoints=1000',
        '--config.train.log_every=10',
        mode='train',
      ),
      jax_cache,
    )
  )
  # Started mid-run: once the trainer's first checkpoint is complete.
  deadline = time.monotonic() + PATIENCE_S
  while not checkpoints.saved_steps(workdir):
    assert trainer.proc.poll() is None, trainer.text()[-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.2)
  # A folder as the trainer leaves it while it writes a step: the follower must not remove it
  # (the trainer removes such leftovers only when it starts).
  being_written = workdir / 'checkpoints' / f'{NUM_STEPS + EVERY}.orbax-checkpoint-tmp-1'
  (being_written / 'state').mkdir(parents=True)
  follower = Output(start(_follower(workdir, shapes_data_dir), jax_cache))
  trainer_status, _ = trainer.finish(timeout=PATIENCE_S)
  during_training = sorted(_evaluated_steps(follower.text()))
  follower_status, _ = follower.finish(timeout=PATIENCE_S)
  assert trainer_status == 0, trainer.text()[-3000:]
  assert follower_status == 0, follower.text()[-3000:]

  saved = checkpoints.saved_steps(workdir)
  assert saved == list(range(EVERY, NUM_STEPS + 1, EVERY))
  assert being_written.exists()
  assert 'Save failed' not in trainer.text() and 'Traceback' not in trainer.text()
  for step in saved:  # every checkpoint intact: every array file of it reads back
    arrays = ocp.PyTreeCheckpointer().restore(workdir / 'checkpoints' / str(step) / 'state')
    assert len(jax.tree.leaves(arrays)) > 100, step
  evaluated = _evaluated_steps(follower.text())
  assert sorted(evaluated) == saved and set(evaluated.values()) == {1}, evaluated
  history = json.loads((workdir / 'eval_results.json').read_text())['history']
  assert sorted(h['step'] for h in history) == saved
  assert _tensorboard_steps(workdir, 'eval/PQ') == saved
  # How far the follower kept up: printed, not asserted (it depends on the machine's load).
  print(f'evaluated while the trainer ran: {during_training} of {saved}')

  # Restarted after the end: every step is in eval_results.json, so nothing is evaluated again.
  again = Output(start(_follower(workdir, shapes_data_dir), jax_cache))
  assert again.finish(timeout=PATIENCE_S)[0] == 0, again.text()[-3000:]
  assert not _evaluated_steps(again.text()) and 'to its final step' in again.text()


@pytest.mark.slow
def test_a_follower_stops_on_a_signal_and_when_no_trainer_holds_the_workdir(
  tmp_path, shapes_data_dir, jax_cache
):
  workdir = tmp_path / 'run'
  trainer = Output(
    start(
      main_command(
        workdir, shapes_data_dir, '--config.train.num_steps=4', '--config.eval.num_examples=1'
      ),
      jax_cache,
    )
  )
  assert trainer.finish(timeout=PATIENCE_S)[0] == 0, trainer.text()[-3000:]
  # The trainer's own evaluation of step 4 is in eval_results.json: the follower of a run of
  # NUM_STEPS has nothing to evaluate and waits for the next checkpoint.
  waiting = Output(start(_follower(workdir, shapes_data_dir), jax_cache))
  waiting.wait_for('Following ')
  time.sleep(1.0)
  waiting.proc.send_signal(signal.SIGTERM)
  status, seconds = waiting.finish(timeout=60)
  assert status == 143 and 'SIGTERM received: stopped following' in waiting.text(), waiting.text()
  print(f'SIGTERM while following: exited 143 after {seconds:.1f} s')

  # No training run holds run.lock: after follow_timeout_s the follower stops, naming the reason.
  orphan = Output(
    start(_follower(workdir, shapes_data_dir, '--config.eval.follow_timeout_s=1'), jax_cache)
  )
  status, _ = orphan.finish(timeout=PATIENCE_S)
  assert status == 1, orphan.text()[-3000:]
  assert 'no training run has held' in orphan.text()
  assert f'step {NUM_STEPS} (config.train.num_steps) has not appeared' in orphan.text()
  assert 'up to step 4 is evaluated' in orphan.text()
  assert not (workdir / 'run.lock').exists()
