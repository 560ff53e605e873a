"""The package's shape, as the layout rules say. Checked here:

1. No import circles among the package's modules.
2. Layers: a module imports only modules of its own folder or of a lower layer (LAYERS, top
   first): main -> tools -> loops -> tasks -> evaluation -> models / data -> diffusion -> formats
   -> runtime -> parallel -> config. The folders of one layer do not import each other. config/
   sits at the bottom: it checks the code it configures through an interface
   (loops/registries.py builds it) and imports none of it.
3. The task is chosen in one place: only tasks/registry.py reads `config.task` (config/defaults.py
   defines the field, in one line), and no module asks whether a run or a dataset is a video
   with an `is_video` flag. Image versus video is the task's to say: outside tasks/ nothing reads
   a source's `clips` or the task's `reads_clips`, or looks for a batch's 'cond_label'.
4. The package root holds main.py (and __init__.py) only; every other module sits in its
   concern's folder.

Imports are read with `ast`, those inside functions included (a lazy import hides a circle from
Python, not from a reader). Module length is a judgement aid, not a rule: the test run's summary
lists the modules past ~600 lines (conftest.py), so that a reader can ask whether one holds two
jobs.
"""

import ast
import os
import re

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'pix2seq_d')
# Top first. A module may import its own folder and any folder of a later (lower) layer.
LAYERS = (
  ('main',),
  ('tools',),
  ('loops',),
  ('tasks',),
  ('evaluation',),
  ('models', 'data'),
  ('diffusion',),
  ('formats',),
  ('runtime',),
  ('parallel',),
  ('config',),
)


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


def folder_of(module: str) -> str:
  """'pix2seq_d.loops.train' -> 'loops'; the root's modules ('pix2seq_d.main') -> 'main'."""
  parts = module.split('.')
  return parts[1] if len(parts) > 2 else 'main'


def layer_violations(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
  """'a -> b' for every import of a module of the same or a higher layer in another folder."""
  rank = {folder: index for index, group in enumerate(layers) for folder in group}
  bad = []
  for module, targets in sorted(graph.items()):
    source = folder_of(module)
    for target in sorted(targets):
      if folder_of(target) != source and rank[folder_of(target)] <= rank[source]:
        bad.append(f'{module} -> {target}')
  return bad


def test_cycle_finder_finds_a_planted_circle():
  graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
  assert find_cycle(graph) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_no_import_circle_in_the_package():
  graph = import_graph()
  assert len(graph) > 30 and 'pix2seq_d.loops.train' in graph['pix2seq_d.main']
  cycle = find_cycle(graph)
  assert cycle is None, ' -> '.join(cycle)


def test_layer_check_finds_planted_upward_and_sideways_imports():
  graph = {
    'p.loops.a': {'p.tasks.b', 'p.loops.c'},
    'p.loops.c': set(),
    'p.tasks.b': {'p.loops.a'},  # up
    'p.models.m': {'p.data.d'},  # sideways within one layer
    'p.data.d': {'p.runtime.r'},
    'p.runtime.r': set(),
  }
  layers = (('loops',), ('tasks',), ('models', 'data'), ('runtime',))
  assert layer_violations(graph, layers) == ['p.models.m -> p.data.d', 'p.tasks.b -> p.loops.a']


def test_no_module_imports_a_higher_layer():
  graph = import_graph()
  folders = {folder_of(module) for module in graph}
  assert folders == {folder for group in LAYERS for folder in group}, folders
  assert not layer_violations(graph)


def test_config_imports_none_of_what_it_configures():
  """config/ checks tasks, models, evaluators, samplers and datasets through `Registries`."""
  graph = import_graph()
  config_modules = [name for name in graph if folder_of(name) == 'config']
  assert 'pix2seq_d.config.checks' in config_modules
  configured = ('tasks', 'models', 'evaluation', 'diffusion', 'data')
  imported = {
    f'{module} -> {target}'
    for module in config_modules
    for target in graph[module]
    if folder_of(target) in configured
  }
  assert not imported, sorted(imported)


def _reads_config_task(tree: ast.AST) -> bool:
  """Whether the module reads or writes `<...>config.task` (messages may name the field)."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and node.attr == 'task':
      owner = node.value
      name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, 'id', '')
      if name == 'config':
        return True
  return False


def test_the_task_is_chosen_in_one_place():
  readers, flags = set(), {}
  for name, path in _modules().items():
    with open(path) as f:
      text = f.read()
    if _reads_config_task(ast.parse(text, path)):
      readers.add(name)
    if 'is_video' in text:
      flags[name] = [line.strip() for line in text.splitlines() if 'is_video' in line]
  # config/defaults.py defines the field; tasks/registry.py is the only module that reads it.
  assert readers == {'pix2seq_d.config.defaults', 'pix2seq_d.tasks.registry'}, readers
  assert not flags, flags


def test_a_planted_config_task_read_is_found():
  assert _reads_config_task(ast.parse('if self.config.task == "x": pass'))
  assert _reads_config_task(ast.parse('name = config.task'))
  assert not _reads_config_task(ast.parse("raise ValueError(f'config.task={name!r}')"))


def test_image_versus_video_is_the_tasks_question():
  pattern = re.compile(r"\.clips\b|\breads_clips\b|'cond_label'\s+(not\s+)?in\b")
  found = {}
  for name, path in _modules().items():
    if folder_of(name) == 'tasks':
      continue
    with open(path) as f:
      lines = [line.strip() for line in f if pattern.search(line)]
    if lines:
      found[name] = lines
  assert not found, found


def test_the_package_root_holds_only_the_entry_point():
  root = sorted(name for name in os.listdir(PACKAGE) if name.endswith('.py'))
  assert root == ['__init__.py', 'main.py']
