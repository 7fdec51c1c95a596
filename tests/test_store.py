"""The store (``core/store``) is the one home of the run-folder contract: no file name of an artifacts root or a run
folder is spelled in a string outside it, and the computations it stores the results of never touch files.

Static checks (``ast``, no import of the scanned code): well under a second."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from core.store import files

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("core", "trainer", "dashboard", "bench", "scripts")
STORE = REPO / "core" / "store"
# computations whose results the store reads and writes: pure functions of arrays and models
PURE = ("evaluate/calibration", "explain/cams", "explain/faithfulness", "explain/fast_cams", "explain/focus",
        "evaluate/metrics", "evaluate/population", "evaluate/site")
MARK = "\x00"  # stands for a split or epoch in the per-split names


def _patterns() -> list[re.Pattern]:
    """Every fixed name (``*_FILE``) as a word, and every per-split name (``predictions_<split>.csv``...) with
    anything in the split's place (a format field, a glob star, a placeholder)."""
    exact = sorted(v for k, v in vars(files).items() if k.endswith("_FILE") and isinstance(v, str))
    split = [files.predictions_file(MARK), files.metrics_file(MARK), files.focus_table_file(MARK),
             files.focus_summary_file(MARK), files.evaluated_file(MARK), files.epoch_checkpoint(".", 0).name]
    out = [re.compile(rf"(?<![A-Za-z0-9.-]){re.escape(name)}(?!\w)") for name in exact]
    for name in split:
        head, _, tail = (name.replace("000", MARK) if MARK not in name else name).partition(MARK)
        out.append(re.compile(rf"(?<![A-Za-z0-9.-]){re.escape(head)}[^\s\"'/]*{re.escape(tail)}(?!\w)"))
    return out


PATTERNS = _patterns()


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (module, class and function docstrings document the contract; they may name files)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _strings(tree: ast.AST):
    """(line, text) of every string in code: constants, and f-strings with ``{}`` for each formatted value."""
    skip = _docstrings(tree)
    inner = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            yield node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip | inner:
            yield node.lineno, node.value


def offences(source: str) -> list[tuple[int, str]]:
    return [(line, text) for line, text in _strings(ast.parse(source))
            if any(p.search(text) for p in PATTERNS)]


def _sources() -> list[Path]:
    return sorted(p for d in SCANNED for p in (REPO / d).rglob("*.py")
                  if not p.is_relative_to(STORE) and "results" not in p.parts)


def test_the_detector_finds_names_in_strings_and_f_strings_but_not_in_docstrings():
    assert offences('x = "config.json"') and offences('p = d / f"metrics_{split}.json"')
    assert offences('g = m.glob("lung_focus_*.csv")') and offences('h = "listed in evaluated_<split>.json"')
    assert offences('c = ckpt / f"epoch_{n:03d}.pt"') and offences('f"{name}_MODEL_CARD.md"')
    assert not offences('"""Writes config.json and metrics_<split>.json."""\nx = "model.safetensors"')
    assert not offences('def f():\n    """Reads status.json."""\n    return "metrics"')


def test_no_file_name_of_a_run_folder_is_spelled_outside_the_store():
    found = {str(p.relative_to(REPO)): f for p in _sources() if (f := offences(p.read_text(encoding="utf-8")))}
    assert len(_sources()) > 50 and not found, ("artifact file names spelled outside core/store; use its readers, "
                                                f"writers, constants or path functions instead: {found}")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


@pytest.mark.parametrize("module", PURE)
def test_the_computations_do_not_read_or_write_artifacts(module):
    found = {n for n in _imports(REPO / "core" / f"{module}.py") if n == "core.store" or n.startswith("core.store.")}
    assert not found, f"core/{module}.py imports {sorted(found)}: computations take arrays and models, not files"


def test_the_store_imports_nothing_above_it():
    """The store sits below the trainer, the dashboard and the model-loading code: nothing it imports runs back up."""
    above = ("trainer", "dashboard", "bench", "scripts", "core.models.inference", "core.report.summary",
             "core.models.onnx_backend",
             "core.models.checkpoints", "core.models.recipe")
    for path in STORE.glob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[0] in above or any(n.startswith(a) for a in above[4:])}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"
