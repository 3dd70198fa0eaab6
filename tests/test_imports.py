"""The package's import structure (docs/design.md, "Architecture"): imports go one way.

Every `import`/`from ... import` of a phenaki_jax module counts, at module level or inside a
function: no module imports one that imports it back (directly or through others), `models/`
imports nothing of the package but `models/`, `data/` nothing but `data/`, and the trainers
never import each other.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "phenaki_jax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict:
  return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: pathlib.Path, modules: dict) -> set:
  """The phenaki_jax modules `path` imports anywhere in its body."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from a.b import c`: c is a module (a.b.c) or a name in a.b.
      names = [
        f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
        for a in node.names
      ]
    else:
      continue
    found.update(n for n in names if n in modules and n != "phenaki_jax")
  return found


@pytest.fixture(scope="module")
def graph() -> dict:
  modules = _modules()
  return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_the_graph_is_read(graph):
  """The parser sees the imports it should (a test of the test)."""
  assert "phenaki_jax.models.cvivit" in graph["phenaki_jax.tokenizer"]
  assert "phenaki_jax.trainers.common" in graph["phenaki_jax.trainers.maskgit"]
  assert "phenaki_jax.models.layers" in graph["phenaki_jax.models.maskgit"]


def test_no_import_cycles(graph):
  state, cycles = {}, []

  def visit(node, stack):
    state[node] = "open"
    for other in sorted(graph[node]):
      if state.get(other) == "open":
        cycles.append(stack[stack.index(other) :] + [other])
      elif other not in state:
        visit(other, stack + [other])
    state[node] = "done"

  for name in sorted(graph):
    if name not in state:
      visit(name, [name])
  assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("layer", ["phenaki_jax.models", "phenaki_jax.data"])
def test_layers_import_only_themselves(graph, layer):
  bad = {
    m: sorted(i for i in imports if not i.startswith(layer))
    for m, imports in graph.items()
    if m.startswith(layer + ".")
  }
  assert not {m: i for m, i in bad.items() if i}


def test_trainers_do_not_import_each_other(graph):
  trainers = {
    m for m in graph if m.startswith("phenaki_jax.trainers.") and not m.endswith(".common")
  }
  assert len(trainers) >= 2
  assert not {m: sorted(graph[m] & trainers) for m in trainers if graph[m] & trainers}


@pytest.mark.parametrize(
  "arg, want",
  [
    ("configs/cvivit_b.py", "workdirs/cvivit_b"),
    ("configs/maskgit_b.py:tiny", "workdirs/maskgit_b_tiny"),
    ("/abs/path/my_run.py:real", "workdirs/my_run_real"),
  ],
)
def test_default_workdir_is_named_after_the_config(arg, want):
  """`python -m phenaki_jax.train` without --workdir writes to workdirs/<config>[_<variant>]."""
  from phenaki_jax import config_io  # pylint: disable=g-import-not-at-top

  assert config_io.default_workdir(arg) == want
