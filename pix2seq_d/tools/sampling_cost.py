"""The price of quality: PQ and images/s of a trained run against sampling steps, sampler and the
number of samples merged per image.

  python -m pix2seq_d.tools.sampling_cost --config=configs/shapes.py --workdir=RUN \
      --output_dir=COST [--steps=1,2,4,8,16,32,100] [--samplers=ddim,ddpm] \
      [--num_samples=1,2,4,8] [--samples_steps=4]
  python -m pix2seq_d.tools.sampling_cost --output_dir=COST --report_only   # table and plot again

Each point is one evaluation of the run's latest checkpoint (its EMA weights, opened read-only)
over the whole eval split, with the config's sampler and steps replaced:
  * one sample per image at every --steps, for every --samplers;
  * K samples per image (--num_samples, merged as config.eval.num_samples does) at
    --samples_steps steps of the config's sampler: K samples of s steps cost about what one
    sample of K * s steps does (the encoder runs once either way), so each K is compared with one
    sample at K * s.
A point writes COST/<sampler>_steps<s>_k<K>/eval_results.json (the run's own eval_results.json
is not touched); a point whose file exists is not run again, so an interrupted sweep continues.
Then COST/sampling_cost.md (the table) and COST/sampling_cost.png (the plot) are made from those
files. images/s is `examples_per_s` of the evaluation: after the first batch, so without the
compilation, and with the post-processing and scoring of every image.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from pix2seq_d.tools.sampling_cost_report import PLOT, TABLE, Point, report, sweep

config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=False)
flags.DEFINE_string('workdir', None, 'The trained run.')
flags.DEFINE_string('output_dir', None, 'Where each point, the table and the plot go.')
flags.DEFINE_list('steps', ['1', '2', '4', '8', '16', '32', '100'], 'Sampling steps, 1 sample.')
flags.DEFINE_list('samplers', ['ddim', 'ddpm'], 'Samplers swept over --steps.')
flags.DEFINE_list('num_samples', ['1', '2', '4', '8'], 'Samples merged per image.')
flags.DEFINE_integer('samples_steps', 4, 'Steps of each sample in the --num_samples sweep.')
flags.DEFINE_bool('report_only', False, 'Only (re)make the table and the plot from the points.')
FLAGS = flags.FLAGS


def _positive_ints(values, flag: str) -> list[int]:
  try:
    numbers = [int(v) for v in values]
  except ValueError:
    numbers = []
  if not numbers or min(numbers) < 1:
    raise app.UsageError(f'--{flag}={",".join(values)}: give positive integers, e.g. 1,2,4.')
  return numbers


def run_points(config, workdir: str, points: list[Point], output_dir: str) -> None:
  """Evaluates every point whose results are not in output_dir yet (module docstring)."""
  from pix2seq_d.loops import registries
  from pix2seq_d.loops import run as run_lib
  from pix2seq_d.runtime import checkpoints, workdir_files

  todo = [p for p in points if not _results_path(output_dir, p).exists()]
  if not todo:
    return
  manager = checkpoints.CheckpointManager(workdir, read_only=True)
  try:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f'--workdir={workdir}: no complete checkpoint; train first.')
    weights = None
    for point in todo:
      point_config = config.copy_and_resolve_references()
      point_config.diffusion.sampler = point.sampler
      point_config.diffusion.steps = point.steps
      point_config.eval.num_samples = point.num_samples
      if point.num_samples > 1 and 'pq_single' not in point_config.eval.metrics:
        point_config.eval.metrics = tuple(point_config.eval.metrics) + ('pq_single',)
      registries.check_config(point_config, 'eval')
      folder = os.path.join(output_dir, point.name)
      run = run_lib.open_run(point_config, folder, data='eval')  # results go to its folder
      if weights is None:  # the sampler's settings leave the weights' shapes as they are
        weights = run.restore_ema(manager, step)
      logging.info('Point %s: %d sample(s) of %d %s steps.', *_describe(point))
      run.evaluation(None)(*weights, step)
      assert os.path.exists(os.path.join(folder, workdir_files.RESULTS_FILE))
  finally:
    manager.close()


def _describe(point: Point) -> tuple:
  return point.name, point.num_samples, point.steps, point.sampler


def _results_path(output_dir: str, point: Point):
  from etils import epath

  from pix2seq_d.runtime import workdir_files

  return epath.Path(output_dir) / point.name / workdir_files.RESULTS_FILE


def main(argv) -> None:
  del argv
  if not FLAGS.output_dir:
    raise app.UsageError('--output_dir is required.')
  if not FLAGS.report_only:
    if FLAGS.config is None or not FLAGS.workdir:
      raise app.UsageError('--config and --workdir are required (or --report_only).')
    for sampler in FLAGS.samplers:
      if sampler not in ('ddim', 'ddpm'):
        raise app.UsageError(f'--samplers={",".join(FLAGS.samplers)}: each ddim or ddpm.')
    points = sweep(
      _positive_ints(FLAGS.steps, 'steps'),
      FLAGS.samplers,
      _positive_ints(FLAGS.num_samples, 'num_samples'),
      FLAGS.samples_steps,
      FLAGS.config.diffusion.sampler,
    )
    run_points(FLAGS.config, FLAGS.workdir, points, FLAGS.output_dir)
  try:
    print(report(FLAGS.output_dir))
  except FileNotFoundError as error:
    raise app.UsageError(f'--output_dir: {error}') from None
  print(f'-> {os.path.join(FLAGS.output_dir, TABLE)}, {os.path.join(FLAGS.output_dir, PLOT)}')


if __name__ == '__main__':
  app.run(main)
