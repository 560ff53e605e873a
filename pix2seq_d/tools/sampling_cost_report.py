"""The points of the price-of-quality sweep (`tools/sampling_cost.py`) and their report: a
markdown table and a plot made from each point's eval_results.json.

  COST/<sampler>_steps<s>_k<K>/eval_results.json   one evaluation per point
  COST/sampling_cost.md, COST/sampling_cost.png    `report(COST)`

No flags are defined here, so tests and other tools can import it.
"""

from __future__ import annotations

import dataclasses
import json
import os

TABLE, PLOT = 'sampling_cost.md', 'sampling_cost.png'
RESULTS_FILE = 'eval_results.json'  # as runtime/workdir_files.py names it


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


def read_points(output_dir: str) -> list[tuple[Point, dict]]:
  """(point, its latest record) of every point folder in output_dir, cheapest first."""
  found = []
  for name in sorted(os.listdir(output_dir)):
    path = os.path.join(output_dir, name, RESULTS_FILE)
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
  from matplotlib import pyplot, ticker

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
  by_speed.xaxis.set_minor_formatter(ticker.NullFormatter())  # labels of 2..9 x 10^k overlap
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
    raise FileNotFoundError(f'{output_dir}: no point has results yet.')
  text = table(results)
  json_files.write_text_atomically(os.path.join(output_dir, TABLE), text)
  plot(results, os.path.join(output_dir, PLOT))
  return text
