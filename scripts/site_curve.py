"""How many labelled films a site needs: the learning curve of ``core.evaluate.site`` measured on real sets (issue 18).

    python scripts/site_curve.py --run artifacts/kermany-robust --model mobilenet_v2_lungs_plain \\
        --site-run artifacts/kermany-robust --site nih_adult [--draws 300]

Sets: the run's ``test`` split (held-out patients of the training collection), ``official_val`` (16 films: only
N = 10 fits, against 6 films) and the site films of ``--site`` (a profile written by ``trainer site``). Writes
docs/site-curve.md (table) and docs/site-curve.png (figure).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.evaluate import calibration  # noqa: E402
from core.evaluate import site as site_mod  # noqa: E402
from core.store import Run, atomic_write_text, read_scaling, read_site_predictions  # noqa: E402

SIZES = (10, 20, 50, 100, 200, 300)


def curve_for(model, y, p, draws: int, seed: int) -> list[dict]:
    val = model.metrics("val")
    return site_mod.learning_curve(y, p, config=model.config, val_thresholds=val["thresholds"],
                                   val_scaling=read_scaling(model.dir),
                                   val_prevalence=float(val["prevalence"]), sizes=SIZES, draws=draws, seed=seed)


def em_row(model, y, p) -> str:
    val = model.metrics("val")
    scaling = read_scaling(model.dir) or calibration.Scaling(1.0)
    est = site_mod.estimate_prevalence(scaling(p), float(val["prevalence"]), n_boot=300)
    return f"{est['value']:.3f} [{est['ci'][0]:.3f}, {est['ci'][1]:.3f}] (true {np.mean(y):.3f})"


def table(curves: dict) -> str:
    lines = ["| set | N | draws | films scored | sens. error median (pts) | abs. sens. error median / 90th pct | "
             "within 3 pts | abs. spec. error median / 90th pct | ECE median / 90th pct |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, rows in curves.items():
        for r in rows:
            n = "0 (validation)" if r["n"] == 0 else str(r["n"])
            lines.append(f"| {name} | {n} | {r['draws']} | {r['rest']} | {r['sens_err_median']:+.1f} | "
                         f"{r['sens_abs_median']:.1f} / {r['sens_abs_p90']:.1f} | {100 * r['within_3_points']:.0f}% | "
                         f"{r['spec_abs_median']:.1f} / {r['spec_abs_p90']:.1f} | "
                         f"{r['ece_median']:.3f} / {r['ece_p90']:.3f} |")
    return "\n".join(lines)


def figure(curves: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, rows in curves.items():
        rows = [r for r in rows if r["n"]]
        if not rows:
            continue
        n = [r["n"] for r in rows]
        (line,) = ax[0].plot(n, [r["sens_abs_median"] for r in rows], "o-", label=f"{name} median")
        ax[0].plot(n, [r["sens_abs_p90"] for r in rows], "s--", color=line.get_color(), label=f"{name} 90th pct")
        ax[1].plot(n, [r["spec_abs_median"] for r in rows], "o-", color=line.get_color())
        ax[1].plot(n, [r["spec_abs_p90"] for r in rows], "s--", color=line.get_color())
        ax[2].plot(n, [r["ece_median"] for r in rows], "o-", color=line.get_color())
    ax[0].axhline(3, color="grey", lw=0.8)
    for a, t in zip(ax, ("|sensitivity - oracle's| (points)", "|specificity - oracle's| (points)",
                         "ECE of the site calibration")):
        a.set_xscale("log")
        a.set_xticks(SIZES, [str(s) for s in SIZES])
        a.set_xlabel("labelled site films N")
        a.set_title(t, fontsize=10)
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="artifacts/kermany-robust")
    p.add_argument("--model", default="mobilenet_v2_lungs_plain")
    p.add_argument("--site-run", help="run folder whose models hold the site profile (trainer site)")
    p.add_argument("--site", default="nih_adult")
    p.add_argument("--draws", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/site-curve")
    args = p.parse_args(argv)
    model = Run(Path(args.run)).model(args.model)
    sets = {split: model.predictions(split) for split in ("test", "official_val")}
    if args.site_run:
        sets[args.site] = read_site_predictions(Run(Path(args.site_run)).model(args.model), args.site)
    curves, em = {}, {}
    for name, df in sets.items():
        y, prob = df["label"].to_numpy(int), df["probability"].to_numpy(float)
        curves[name] = curve_for(model, y, prob, args.draws, args.seed)
        em[name] = em_row(model, y, prob)
    needed = {name: site_mod.films_needed(rows) for name, rows in curves.items()}
    out = Path(args.out)
    figure(curves, out.with_suffix(".png"))
    atomic_write_text(out.with_suffix(".md"), report(args, model, sets, curves, em, needed))
    print(table(curves))
    print(needed)
    return 0


def report(args, model, sets, curves, em, needed) -> str:
    rule = site_mod.headline_rule(model.config)
    counts = ", ".join(f"`{k}` {len(v)} films ({int(v['label'].sum())} PNEUMONIA)" for k, v in sets.items())
    need = "; ".join(f"`{k}`: {v}" if v else f"`{k}`: more than {max(r['n'] for r in curves[k])} (not reached)"
                     for k, v in needed.items())
    return f"""# How many labelled films a site needs (measured)

Model `{args.model}` of run `{Path(args.run).name}`, its own threshold rule `{rule}`. Sets: {counts}.
For each N, {args.draws} random draws of N films: the site threshold (the model's rule) and calibration
(`core.evaluate.site.site_calibration`: temperature and bias from {site_mod.MIN_FULL_FIT} films, bias only below,
validation below {site_mod.MIN_PER_CLASS} films a class) fitted on the N films exactly as `trainer site` does,
then scored on the remaining films against the **oracle**: the same rule chosen on those remaining films.
Errors are in percentage points (site minus oracle). N = 0 is the validation threshold and calibration carried over
unchanged. `official_val` has 16 films: only N = 10 fits, scored on 6 films, so its row is noise.

![learning curve](site-curve.png)

{table(curves)}

**Films needed** for the site threshold to be within 3 points of the oracle's sensitivity in 90 % of draws: {need}.
`trainer site` warns below `core.evaluate.site.SUPPORTED_N` = {site_mod.SUPPORTED_N} labelled films.

EM prior adjustment (Saerens et al. 2002) on all films of each set, from the validation calibration, 95 % bootstrap
interval: {"; ".join(f"`{k}` {v}" for k, v in em.items())}. It assumes only the share of the classes changed; on
films unlike the training films the model's probabilities themselves shift, and the estimate with them.

Command: `nice -n 15 python scripts/site_curve.py --run {args.run} --model {args.model} --site-run {args.site_run}
--site {args.site} --draws {args.draws}`, after
`python -m trainer site --run {args.site_run} --data ../shared/data/nih_adult --site {args.site} --models {args.model}`
wrote the site's predictions (`<model>/sites/{args.site}/`; the run's own files are not written).
"""


if __name__ == "__main__":
    raise SystemExit(main())
