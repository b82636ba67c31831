"""The package's shape: no import cycles, thin entry scripts, values checked in one place."""

import ast
from functools import lru_cache
from pathlib import Path

import nnlib

PACKAGE = Path(nnlib.__file__).resolve().parent
ROOT = PACKAGE.parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """nnlib modules that ``path`` imports anywhere (functions included; ``if TYPE_CHECKING:`` excluded)."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnlib"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            found |= subs or ({node.module} & modules)
    return found


@lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, set(files)) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "nnlib.driver" in graph["nnlib.cli"]  # the walker sees real edges
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_numeric_core_imports_no_engine_and_does_no_io():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("nnlib.core"):
            assert all(d.startswith("nnlib.core") or d == "nnlib.errors" for d in deps), (name, deps)


# The layers, lowest first: a module may import only from its own layer or below.
LAYERS = [
    ("nnlib.errors", "nnlib.util"),
    ("nnlib.core",),
    ("nnlib.config",),
    ("nnlib.data",),
    ("nnlib.rounds",),
    ("nnlib.outputs", "nnlib.model"),
    ("nnlib.engines",),
    ("nnlib.driver",),
    ("nnlib.api", "nnlib.experiments", "nnlib.spark"),
    ("nnlib.cli", "nnlib.__main__", "nnlib"),
]


def layer_of(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if (
            any(module == p or module.startswith(p + ".") for p in prefixes if p != "nnlib")
            or module == "nnlib"
            and "nnlib" in prefixes
        ):
            return rank
    raise AssertionError(f"{module} is in no layer of tests/test_architecture.py's LAYERS: place it there")


def test_the_layer_finder_places_modules():
    assert layer_of("nnlib.core.mlp") < layer_of("nnlib.rounds.reduce") < layer_of("nnlib.engines.mpi.engine")
    assert layer_of("nnlib.engines.spark.engine") < layer_of("nnlib.experiments.search") < layer_of("nnlib.cli")


def test_no_module_imports_from_a_higher_layer():
    graph = import_graph()
    upward = [(name, dep) for name, deps in graph.items() for dep in deps if layer_of(dep) > layer_of(name)]
    assert not upward, "imports from a higher layer: " + ", ".join(f"{a} -> {b}" for a, b in upward)
    assert [name for name, deps in graph.items() if "nnlib.cli" in deps] == ["nnlib.__main__"], (
        "nothing but python -m nnlib imports the CLI"
    )


def test_the_layers_show_in_the_tree():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 9, f"{len(top)} modules directly in nnlib/: {top}"
    for engine in ("spark", "mpi", "mrjob"):
        assert (PACKAGE / "engines" / engine / "__init__.py").is_file(), engine


def test_the_mpi_engine_computes_no_combine_coefficients_of_its_own():
    """MPI adds the reduce's shares (nnlib.rounds.reduce); the rules' coefficients and sub-network
    placement come from there alone."""
    graph = import_graph()
    mpi = {d for name, deps in graph.items() if name.startswith("nnlib.engines.mpi") for d in deps}
    assert not mpi & {"nnlib.core.combine", "nnlib.core.split"}, mpi
    source = "".join(p.read_text() for p in (PACKAGE / "engines" / "mpi").glob("*.py"))
    assert "COEFFICIENTS" not in source and "embed(" not in source


def test_entry_scripts_are_thin():
    for script in (ROOT / "jobs").glob("*.py"):
        code = [ln for ln in script.read_text().split('"""')[-1].splitlines() if ln.strip()]
        assert len(code) <= 6, f"{script.name} holds {len(code)} lines of code"
        assert "sys.path" not in script.read_text() and "__file__" not in script.read_text()


def test_no_path_into_the_source_tree():
    import re

    for path in PACKAGE.rglob("*.py"):  # nothing climbs out of the package to jobs/ or conf/
        assert not re.search(r"parents\[[1-9]\]|/ \"(jobs|conf)\"|\.parent\.parent", path.read_text()), path


def test_default_conf_holds_only_what_differs_from_the_defaults():
    from nnlib.config import Config, load_config, read_yaml

    tree = read_yaml(ROOT / "conf/default.yaml")
    defaults = Config().to_dict()
    for key, value in tree.items():
        assert not isinstance(value, dict) and defaults[key] != value, key
    assert load_config(ROOT / "conf/default.yaml").model_copy(update={"engine": "local"}) == Config()
