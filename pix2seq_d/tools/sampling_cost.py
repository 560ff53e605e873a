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

import dataclasses
import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=False)
flags.DEFINE_string('workdir', None, 'The trained run.')
flags.DEFINE_string('output_dir', None, 'Where each point, the table and the plot go.')
flags.DEFINE_list('steps', ['1', '2', '4', '8', '16', '32', '100'], 'Sampling steps, 1 sample.')
flags.DEFINE_list('samplers', ['ddim', 'ddpm'], 'Samplers swept over --steps.')
flags.DEFINE_list('num_samples', ['1', '2', '4', '8'], 'Samples merged per image.')
flags.DEFINE_integer('samples_steps', 4, 'Steps of each sample in the --num_samples sweep.')
flags.DEFINE_bool('report_only', False, 'Only (re)make the table and the plot from the points.')
FLAGS = flags.FLAGS

TABLE, PLOT = 'sampling_cost.md', 'sampling_cost.png'


@dataclasses.dataclass(frozen=True)
class Point:
  """One evaluation of the sweep."""

  sampler: str
  steps: int
  num_samples: int

  @property
  def name(self) -> str:
    return f'{self.sampler}_steps{self.steps}_k{self.num_samples}'

  @property
  def cost(self) -> int:
    """Decoder passes per image: what the sampling costs, the encoder aside."""
    return self.steps * self.num_samples


def sweep(steps, samplers, num_samples, samples_steps: int, samples_sampler: str) -> list[Point]:
  """Every point of the sweep, each once, in the order they run (cheapest first)."""
  points = [Point(s, n, 1) for s in samplers for n in steps]
  points += [Point(samples_sampler, samples_steps, k) for k in num_samples]
  unique = list(dict.fromkeys(points))
  return sorted(unique, key=lambda p: (p.cost, p.name))


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
  from pix2seq_d.config import checks as config_checks
  from pix2seq_d.loops import setup as setup_lib
  from pix2seq_d.loops import state as state_lib
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
      config_checks.check_config(point_config, 'eval')
      setup = setup_lib.data_and_task(point_config, training=False)
      state, shardings, _, graphdef, _ = state_lib.build_train_state(
        setup.config, setup.mesh, abstract=True
      )
      if weights is None:  # the sampler's settings leave the weights' shapes as they are
        weights = state_lib.restore_ema(manager, step, state)
      folder = os.path.join(output_dir, point.name)
      logging.info('Point %s: %d sample(s) of %d %s steps.', *_describe(point))
      setup.evaluation(graphdef, shardings, folder, None)(*weights, step)
      assert os.path.exists(os.path.join(folder, workdir_files.RESULTS_FILE))
  finally:
    manager.close()


def _describe(point: Point) -> tuple:
  return point.name, point.num_samples, point.steps, point.sampler


def _results_path(output_dir: str, point: Point):
  from etils import epath

  from pix2seq_d.runtime import workdir_files

  return epath.Path(output_dir) / point.name / workdir_files.RESULTS_FILE


def read_points(output_dir: str) -> list[tuple[Point, dict]]:
  """(point, its latest record) of every point folder in output_dir, cheapest first."""
  found = []
  for name in sorted(os.listdir(output_dir)):
    path = os.path.join(output_dir, name, 'eval_results.json')
    if not os.path.isfile(path):
      continue
    sampler, steps, k = name.split('_')
    point = Point(sampler, int(steps.removeprefix('steps')), int(k.removeprefix('k')))
    with open(path) as handle:
      found.append((point, json.load(handle)))
  return sorted(found, key=lambda item: (item[0].cost, item[0].name))


def table(results: list[tuple[Point, dict]]) -> str:
  """A markdown table: one row per point, with the one-sample PQ at the same cost beside K > 1."""
  one_sample = {(p.sampler, p.cost): r['PQ'] for p, r in results if p.num_samples == 1}
  lines = [
    '| sampler | steps | samples | decoder passes | PQ | PQ of sample 1 '
    '| PQ of 1 sample, same passes | images/s |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ]
  for point, record in results:
    single = record.get('PQ_single', record['PQ'])
    same = one_sample.get((point.sampler, point.cost))
    lines.append(
      f'| {point.sampler} | {point.steps} | {point.num_samples} | {point.cost} '
      f'| {record["PQ"]:.3f} | {single:.3f} '
      f'| {"" if same is None or point.num_samples == 1 else f"{same:.3f}"} '
      f'| {record.get("examples_per_s", float("nan")):.2f} |'
    )
  return '\n'.join(lines) + '\n'


def plot(results: list[tuple[Point, dict]], path: str) -> None:
  """PQ against decoder passes per image (log scale): one line per sampler with one sample,
  one for K merged samples; and PQ against images/s."""
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot

  figure, (by_cost, by_speed) = pyplot.subplots(1, 2, figsize=(10, 4))
  lines = {}
  merged = _samples_sweep(results)
  for point, record in results:
    if point.num_samples == 1:
      lines.setdefault(f'{point.sampler}, 1 sample', []).append((point, record))
    if merged and (point.sampler, point.steps) == merged:
      label = f'{point.sampler} {point.steps} steps, K samples merged'
      lines.setdefault(label, []).append((point, record))
  for label, items in lines.items():
    costs = [p.cost for p, _ in items]
    pq = [r['PQ'] for _, r in items]
    speed = [r.get('examples_per_s', float('nan')) for _, r in items]
    style = '--o' if 'merged' in label else '-o'
    by_cost.plot(costs, pq, style, label=label)
    by_speed.plot(speed, pq, style, label=label)
    if 'merged' in label:
      for (point, _), x, y in zip(items, costs, pq, strict=True):
        by_cost.annotate(
          f'K={point.num_samples}', (x, y), textcoords='offset points', xytext=(4, -10)
        )
  by_cost.set(xscale='log', xlabel='decoder passes per image (steps x samples)', ylabel='PQ')
  by_speed.set(xscale='log', xlabel='images/s', ylabel='PQ')
  for axes in (by_cost, by_speed):
    axes.grid(True, alpha=0.3)
  by_cost.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  pyplot.close(figure)


def _samples_sweep(results) -> tuple[str, int] | None:
  """(sampler, steps) of the K-samples sweep: those of its points with K > 1."""
  kinds = {(p.sampler, p.steps) for p, _ in results if p.num_samples > 1}
  return kinds.pop() if len(kinds) == 1 else None


def report(output_dir: str) -> str:
  """Writes the table and the plot of the points in output_dir; returns the table."""
  from pix2seq_d.runtime import json_files

  results = read_points(output_dir)
  if not results:
    raise app.UsageError(f'--output_dir={output_dir}: no point has results yet.')
  text = table(results)
  json_files.write_text_atomically(os.path.join(output_dir, TABLE), text)
  plot(results, os.path.join(output_dir, PLOT))
  return text


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
  print(report(FLAGS.output_dir))
  print(f'-> {os.path.join(FLAGS.output_dir, TABLE)}, {os.path.join(FLAGS.output_dir, PLOT)}')


if __name__ == '__main__':
  app.run(main)
