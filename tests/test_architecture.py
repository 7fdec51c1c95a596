"""The shape of the code (issue 19), read from the source with ``ast``: layers that never import back up, no import
cycle between modules, no function-local imports but the optional or heavy third-party ones, no private name
imported across modules, and docs/design.md naming every module of ``core/`` (and nothing that is gone)."""

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# a package may import only the packages before it... and itself; bench measures all of them
LAYERS = {"core": {"core"}, "trainer": {"core", "trainer"}, "dashboard": {"core", "dashboard"},
          "bench": {"core", "trainer", "dashboard", "bench"}}
# third-party modules that may be imported inside a function: optional (absent on some installs), platform-only,
# or heavy enough that a command or page that does not need them should not pay for them (measured in
# BENCHMARKS.md: torch + timm are most of a cold CLI start)
LAZY_OK = {"onnx", "onnxruntime", "onnxscript", "pydicom", "playwright", "triton", "huggingface_hub", "psutil",
           "cv2", "scipy", "sklearn", "pytorch_grad_cam", "resource", "fcntl", "msvcrt", "torch", "torchvision",
           "timm", "plotly", "altair", "streamlit", "safetensors", "PIL", "pyinstrument"}
# modules whose function-local imports are their job, each with why
LAZY_MODULES = {"dashboard.warm": "imports the pages' heavy modules in a background thread once the server is up, "
                                  "so that the entrypoint's own import stays light (docstring: measured seconds)"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in LAYERS:
        for path in (REPO / pkg).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


MODULES = _modules()


def _imports(name: str, path: Path):
    """(imported module, node, outside any function) for every import statement of one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if n is not f}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node, id(node) not in local
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            yield base, node, id(node) not in local


def _graph() -> dict[str, set[str]]:
    edges = defaultdict(set)
    for name, path in MODULES.items():
        for target, node, _ in _imports(name, path):
            names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            for cand in [target, *(f"{target}.{n}" for n in names)]:
                if cand in MODULES and cand != name and not name.startswith(cand + "."):
                    edges[name].add(cand)
    return edges


def test_no_package_imports_back_up():
    wrong = [f"{a} -> {b}" for a, targets in _graph().items() for b in targets
             if b.split(".")[0] not in LAYERS[a.split(".")[0]]]
    assert not wrong, wrong


# core's subpackages, lowest first: each may import only those before it (and itself). The store sits above the
# computations it records (it reads a Scaling, a headline rule) and below the code that loads models from it;
# reports (results rows, model cards) read everything.
CORE_LAYERS = ("data", "evaluate", "store", "models", "explain", "report")


def test_core_subpackages_never_import_a_later_one():
    rank = {pkg: i for i, pkg in enumerate(CORE_LAYERS)}
    wrong = [f"{a} -> {b}" for a, targets in _graph().items() if a.startswith("core.") for b in targets
             if b.startswith("core.") and rank[b.split(".")[1]] > rank[a.split(".")[1]]]
    assert not wrong, wrong


def test_core_is_only_subpackages():
    loose = sorted(p.name for p in (REPO / "core").glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules at core/'s top level, outside any subpackage: {loose}"
    assert {p.name for p in (REPO / "core").iterdir() if (p / "__init__.py").exists()} == set(CORE_LAYERS)


def test_no_import_cycle_between_modules():
    edges, order, low, stack, cycles = _graph(), {}, {}, [], []

    def visit(v):  # Tarjan's strongly connected components
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in edges[v]:
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            comp = []
            while comp[-1:] != [v]:
                comp.append(stack.pop())
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(MODULES):
        if v not in order:
            visit(v)
    assert not cycles, cycles


def test_function_local_imports_are_only_optional_or_heavy_third_party_ones():
    wrong = sorted({f"{name}: {target}" for name, path in MODULES.items() if name not in LAZY_MODULES
                    for target, _, at_top in _imports(name, path)
                    if not at_top and target.split(".")[0] not in LAZY_OK})
    assert not wrong, wrong


def test_no_private_name_is_imported_across_modules():
    wrong = [f"{name}: {target}.{a.name}" for name, path in MODULES.items()
             for target, node, _ in _imports(name, path) if isinstance(node, ast.ImportFrom)
             and target.split(".")[0] in LAYERS for a in node.names if a.name.startswith("_")]
    assert not wrong, wrong


def test_design_doc_names_every_core_module_and_no_missing_one():
    doc = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(core/[\w/]+(?:\.py|/))`", doc))
    present = {p.relative_to(REPO).as_posix() for p in (REPO / "core").rglob("*.py") if p.name != "__init__.py"}
    packages = {p.parent.relative_to(REPO).as_posix() + "/" for p in (REPO / "core").rglob("__init__.py")} - {"core/"}
    covered = {m for m in present if m in named or any(m.startswith(pkg) for pkg in named & packages)}
    assert present - covered == set(), f"docs/design.md does not name {sorted(present - covered)}"
    gone = {n for n in named if not (REPO / n).exists()}
    assert not gone, f"docs/design.md names {sorted(gone)}, which no longer exist"


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_the_layers_exist(layer):
    assert any(m.split(".")[0] == layer for m in MODULES)
