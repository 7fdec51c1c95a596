"""Children-only models against the populations run, on the same held-out films of each source.

    python scripts/compare_populations.py [--pop artifacts/populations] [--children artifacts/kermany-robust]

The populations run splits each source by patient with the children-only runs' seed, so its Kermany test films
are the children-only run's test films (checked here, not assumed). Its adult test patients were never seen by a
children-only model, whose figures on them come from ``trainer evaluate --split-name nih_adult`` over the whole
NIH folder, restricted here to the populations run's adult test films. Prints a Markdown table: AUC with a
bootstrap interval, and sensitivity/specificity at each model's own validation threshold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.evaluate import metrics  # noqa: E402
from core.evaluate.metrics import headline_rule  # noqa: E402
from core.store import ArtifactError, Run  # noqa: E402


def test_films(pop: Run) -> dict[str, set[str]]:
    """The populations run's test films per source, as paths relative to each source's folder."""
    table = pop.split_table().fillna("")
    table = table[table["split"] == "test"]
    roots = {s["name"]: str(Path(s["data"]).parent if s["data"].endswith((".csv", ".tsv")) else Path(s["data"]))
             for s in pop.info["sources"]}
    return {src: {p.removeprefix(roots[src] + "/") for p in table.loc[table["source"] == src, "path"]}
            for src in roots}


def figures(y, p, threshold) -> str:
    lo, hi = metrics.bootstrap_auc_ci(y, p)
    c = metrics.confusion_at(y, p, threshold)
    return (f"{metrics.auc(y, p):.3f} [{lo:.3f}, {hi:.3f}] | {100 * c['sensitivity']:.1f}% | "
            f"{100 * c['specificity']:.1f}%")


def rows(run: Run, films: dict[str, set[str]], split_of: dict[str, str]) -> list[str]:
    out = []
    for art in run.models:
        try:
            threshold = art.threshold(headline_rule(art.config))
        except ArtifactError:
            continue
        cells = []
        for source, wanted in films.items():
            split = split_of.get(source, "test")
            try:
                df = art.predictions(split)
            except ArtifactError:
                cells.append("– | – | –")
                continue
            if "source" in df.columns and split == "test":
                df = df[df["source"].fillna("") == source].assign(path=lambda d: d["path"].str.split("/", n=1).str[1])
            df = df[df["path"].isin(wanted)]
            if len(df) != len(wanted):
                cells.append(f"({len(df)} of {len(wanted)} films) | – | –")
                continue
            cells.append(figures(df["label"].to_numpy(int), df["probability"].to_numpy(float), threshold))
        out.append(f"| {run.id}/{art.name} | " + " | ".join(cells) + " |")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pop", default="artifacts/populations")
    p.add_argument("--children", default="artifacts/kermany-robust")
    args = p.parse_args(argv)
    pop, children = Run(Path(args.pop)), Run(Path(args.children))
    films = test_films(pop)
    kids = children.split_table()
    assert films["kermany"] == set(kids.loc[kids["split"] == "test", "path"]), "the Kermany test films differ"
    heads = " | ".join(f"{s} AUC [95% CI] | {s} sens | {s} spec" for s in films)
    print(f"Same held-out films: {', '.join(f'{s} {len(f)}' for s, f in films.items())}. Each model at its own "
          "validation threshold (sens95).\n")
    print(f"| model | {heads} |\n|---|" + "---|---:|---:|" * len(films))
    print("\n".join(rows(children, films, {"nih_adult": "nih_adult"}) + rows(pop, films, {})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
