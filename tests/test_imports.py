"""Every module imports: the scripts in scripts/ and every module of core, trainer and bench. A module moved or
renamed (issue 19 cut core/ into subpackages) breaks the files that import it; most are covered by tests that run
them, these ones are not, and an import error would otherwise first show when a user runs them."""

import importlib
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "scripts").glob("*.py"))
MODULES = sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                 for pkg in ("core", "trainer", "bench") for p in (REPO / pkg).rglob("*.py")
                 if p.name != "__main__.py")  # that one runs the command line


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_imports(path):
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # runs its imports; the work sits under ``if __name__ == "__main__"``
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    assert importlib.import_module(name).__name__ == name
