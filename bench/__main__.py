"""``python -m bench [--quick] [--only data,train,infer,cam,dashboard] [--results DIR] [--work DIR]``

Runs the chosen sections in order, prints a table of figures and targets, and writes
``<results>/<timestamp>.json`` and ``<results>/latest.json``. Exit code 1 when a section failed (its traceback
is in the JSON; the other sections still run), 2 on a bad argument.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # Score-CAM's progress bars would flood the output
os.environ.setdefault("CXR_OFFLINE", "1")  # a benchmark never reaches the network

import core  # noqa: E402,F401  (before torch's import: core sets process-wide OpenMP settings)
from bench import REPO, SECTIONS, report  # noqa: E402
from bench.timing import Ctx, loadavg  # noqa: E402


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny repetitions: every section in a few minutes")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections ({','.join(SECTIONS)})")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results", help="where the JSON goes")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("CXR_BENCH_WORK") or
                                                     Path(tempfile.gettempdir()) / "cxr-bench"),
                   help="scratch kept between runs: image caches, the 8-model run (default: $TMPDIR/cxr-bench)")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown or not args.sections:
        p.error(f"--only: unknown section(s) {unknown}; choose from {','.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    import torch  # here, not above: --help and a bad argument should not pay for it

    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(quick=args.quick, results=args.results, work=args.work)
    started = time.perf_counter()
    results = {"command": "python -m bench " + " ".join(shlex.quote(a) for a in argv), "quick": args.quick,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": report.machine(), "sections": {}}
    failed = []
    for name in args.sections:
        print(f"== {name} ...", file=sys.stderr, flush=True)
        t0, load0 = time.perf_counter(), loadavg()
        try:
            r = importlib.import_module(f"bench.{name}").run(ctx)
        except Exception:
            r = {"error": traceback.format_exc(), "figures": [], "checks": []}
            failed.append(name)
            print(r["error"], file=sys.stderr)
        r.update(seconds=time.perf_counter() - t0, load_avg_start=load0, load_avg_end=loadavg())
        results["sections"][name] = r
        print(f"   {name}: {r['seconds']:.0f} s, load average {r['load_avg_end']}", file=sys.stderr, flush=True)
    results["seconds"] = time.perf_counter() - started
    results["load_avg_end"] = loadavg()
    path = report.write(results, args.results)
    print(report.table(results))
    print(f"\nJSON: {path} (and latest.json)")
    if failed:
        print(f"failed sections: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
