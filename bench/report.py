"""Figures, target checks, the machine description, the printed table and the JSON files."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench import REPO
from bench.timing import loadavg


def figure(name: str, value: float, unit: str, **extra) -> dict:
    """One reported number (a median unless the name says otherwise)."""
    return {"name": name, "value": _num(value), "unit": unit, **extra}


def check(name: str, value: float, op: str, target: float, unit: str = "") -> dict:
    """A target: ``value op target`` with op one of >=, <=."""
    v = _num(value)
    met = None if v is None else (v >= target if op == ">=" else v <= target)
    return {"name": name, "value": v, "op": op, "target": target, "unit": unit, "met": met}


def _num(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) or math.isinf(x) else x


def machine() -> dict:
    import psutil  # a dev requirement; torch: ``python -m bench --help`` imports this module and should not pay for it
    import torch

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": cpu, "cores": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "streamlit": _version("streamlit"),
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
            "platform": platform.platform(), "git_head": git_head(),
            "load_avg_start": loadavg()}


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def git_head() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def table(results: dict) -> str:
    """A plain-text table of every section's figures, then the targets."""
    lines = [f"{'section':<10} {'figure':<72} {'value':>12}  unit", "-" * 104]
    checks = []
    for sec, r in results["sections"].items():
        if r.get("error"):
            lines.append(f"{sec:<10} ERROR: {r['error'].strip().splitlines()[-1][:76]}")
            continue
        for f in r.get("figures", []):
            lines.append(f"{sec:<10} {f['name']:<72} {_fmt(f['value']):>12}  {f['unit']}")
        extra = f"  [{r['seconds']:.0f} s, load {r.get('load_avg_end', ['?'])[0]}]" if "seconds" in r else ""
        lines.append(f"{'':<10} {'(section time, 1-min load average at its end)':<72}{extra}")
        checks += [(sec, c) for c in r.get("checks", [])]
    if checks:
        lines += ["", f"{'target':<60} {'value':>10} {'target':>12}  met", "-" * 104]
        for sec, c in checks:
            met = {True: "yes", False: "NO", None: "?"}[c["met"]]
            lines.append(f"{sec + ': ' + c['name']:<60} {_fmt(c['value']):>10} {c['op'] + ' ' + _fmt(c['target']):>12}"
                         f"  {met}")
    m = results["machine"]
    lines += ["", f"{m['cpu_model']}, {m['cores']} cores, {m['ram_gb']} GB, torch {m['torch']}; load average "
                  f"{m['load_avg_start']} at start, {results.get('load_avg_end')} at end; "
                  f"{results.get('seconds', 0):.0f} s in all"]
    return "\n".join(lines)


def write(results: dict, folder: Path) -> Path:
    """``<folder>/<timestamp>.json`` and ``<folder>/latest.json``; returns the first."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"{stamp}.json"
    text = json.dumps(results, indent=1, default=str)
    for p in (path, folder / "latest.json"):
        tmp = p.with_suffix(".json.tmp")
        tmp.write_text(text)
        os.replace(tmp, p)
    return path


def markdown(results: dict) -> str:
    """The figures and targets as Markdown tables (for BENCHMARKS.md): ``python -m bench.report [JSON]``."""
    m = results["machine"]
    minutes = results.get("seconds", 0) / 60
    out = [f"Command: `{results['command']}` · started {results['started']} · {minutes:.1f} min",
           "",
           f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_gb']} GB RAM, torch {m['torch']} "
           f"({m.get('torch_threads')} threads), Python {m['python']}, streamlit {m.get('streamlit')}, "
           f"git {m['git_head'][:12]}; load average (1, 5, 15 min) {m['load_avg_start']} at start, "
           f"{results.get('load_avg_end')} at end", ""]
    for sec, r in results["sections"].items():
        out += [f"### {sec}", ""]
        if r.get("error"):
            out += ["```", r["error"].strip()[-1500:], "```", ""]
            continue
        out += [f"{r.get('seconds', 0):.0f} s; load average {r.get('load_avg_start')} → {r.get('load_avg_end')}", "",
                "| figure | value | unit |", "|---|---:|---|"]
        out += [f"| {f['name']} | {_fmt(f['value'])} | {f['unit']} |" for f in r.get("figures", [])]
        if r.get("checks"):
            out += ["", "| target | value | target | met |", "|---|---:|---:|---|"]
            out += [f"| {c['name']} | {_fmt(c['value'])} | {c['op']} {_fmt(c['target'])} | "
                    f"{ {True: 'yes', False: '**no**', None: '?'}[c['met']] } |" for c in r["checks"]]
        out.append("")
    return "\n".join(out)


def compare(before: dict, after: dict, labels=("before", "after")) -> str:
    """Targets, then figures, of two runs side by side as Markdown (``python -m bench.report --compare A B``)."""
    rows = ["| target | " + " | ".join(labels) + " | target |", "|---|---:|---:|---:|"]
    for sec, r in after["sections"].items():
        old = {c["name"]: c for c in before["sections"].get(sec, {}).get("checks", [])}
        for c in r.get("checks", []):
            b = old.get(c["name"], {})
            cell = lambda x: "n/a" if not x else f"{_fmt(x['value'])}{'' if x['met'] else ' ✗'}"  # noqa: E731
            rows.append(f"| {sec}: {c['name']} | {cell(b)} | {cell(c)} | {c['op']} {_fmt(c['target'])} |")
    rows += ["", "| section | figure | " + " | ".join(labels) + " | unit |", "|---|---|---:|---:|---|"]
    for sec, r in after["sections"].items():
        old = {f["name"]: f for f in before["sections"].get(sec, {}).get("figures", [])}
        for f in r.get("figures", []):
            b = old.get(f["name"])
            was = _fmt(b["value"]) if b else "n/a"
            rows.append(f"| {sec} | {f['name']} | {was} | {_fmt(f['value'])} | {f['unit']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--compare"] and len(args) == 3:
        print(compare(json.loads(Path(args[1]).read_text()), json.loads(Path(args[2]).read_text())))
    else:
        src = Path(args[0]) if args else REPO / "bench" / "results" / "latest.json"
        print(markdown(json.loads(src.read_text())))
