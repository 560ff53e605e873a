"""The package's shape: no import circles, and no file so long that it must hold several jobs.

Imports are read with `ast`, those inside functions included (a lazy import hides a circle from
Python, not from a reader).
"""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'pix2seq_d')
# A module past this many lines usually holds two jobs (the layout's rule of thumb, with room).
MAX_LINES = 450


def _module_name(path: str) -> str:
  relative = os.path.relpath(path, os.path.dirname(PACKAGE))[: -len('.py')].replace(os.sep, '.')
  return relative[: -len('.__init__')] if relative.endswith('.__init__') else relative


def _modules() -> dict[str, str]:
  """{dotted module name: file path} of every module of the package."""
  return {
    _module_name(os.path.join(folder, name)): os.path.join(folder, name)
    for folder, _, names in os.walk(PACKAGE)
    for name in names
    if name.endswith('.py')
  }


def import_graph() -> dict[str, set[str]]:
  """{module: package modules it imports anywhere in its body}."""
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    targets = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for alias in node.names:  # `from a import b` names module a.b when there is one.
          targets.add(
            f'{node.module}.{alias.name}'
            if f'{node.module}.{alias.name}' in modules
            else node.module
          )
    graph[name] = {t for t in targets if t in modules and t not in (name, 'pix2seq_d')}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import circle [a, b, ..., a] of `graph`, or None (depth-first search)."""
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for target in sorted(graph[node]):
      if state.get(target) == 'open':
        return stack[stack.index(target) :] + [target]
      if target not in state and (cycle := visit(target)):
        return cycle
    state[node] = 'done'
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_cycle_finder_finds_a_planted_circle():
  graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
  assert find_cycle(graph) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_no_import_circle_in_the_package():
  graph = import_graph()
  assert len(graph) > 30 and 'pix2seq_d.train' in graph['pix2seq_d.main']
  cycle = find_cycle(graph)
  assert cycle is None, ' -> '.join(cycle)


def test_no_module_is_too_long_to_hold_one_job():
  lengths = {}
  for name, path in _modules().items():
    with open(path) as f:
      lengths[name] = sum(1 for _ in f)
  too_long = {name: n for name, n in lengths.items() if n > MAX_LINES}
  assert not too_long, f'split by job (over {MAX_LINES} lines): {too_long}'
