"""Write the adult cross-site proxy manifest (docs/recipes.md): films from ``../shared/data/lungmasks`` labelled for
``python -m trainer evaluate``.

- NORMAL: the 247 JSRT films (adults, Japan, digitised PA films; none shows pneumonia, 154 carry a lung nodule).
- PNEUMONIA: the films of the COVID-19 image data collection (``v7_ieee8023`` and ``generalblockchain``, one row
  per underlying film by ``group``): adults from many hospitals and countries, nearly all with COVID-19 or another
  pneumonia. A few show none (label noise), and many carry text, arrows, tubes or AP/supine views.

The two classes come from different sources, so a model can separate them by source as well as by disease: read
the AUC as an optimistic proxy, and the JSRT specificity (healthy adults called PNEUMONIA) as the solid figure.

    python scripts/adult_proxy.py --out /tmp/adult_proxy.csv
    cp -r artifacts/kermany-robust /tmp/r    # evaluate adds the split to the run it scores: use a copy
    python -m trainer evaluate --run /tmp/r --data /tmp/adult_proxy.csv --split-name adult_proxy
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NORMAL_SOURCES = ("jsrt_scr",)
PNEUMONIA_SOURCES = ("v7_ieee8023", "generalblockchain")


def rows(lungmasks: Path) -> list[tuple[str, str, str]]:
    """(absolute image path, label, patient id) for each film, one per ``group``."""
    seen, out = set(), []
    with open(lungmasks / "pairs.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            label = "NORMAL" if r["source"] in NORMAL_SOURCES else \
                "PNEUMONIA" if r["source"] in PNEUMONIA_SOURCES else None
            if label is None or r["group"] in seen:
                continue
            seen.add(r["group"])
            out.append((str((lungmasks / r["image"]).resolve()), label, r["group"]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lungmasks", type=Path, default=REPO.parent / "shared" / "data" / "lungmasks")
    ap.add_argument("--out", type=Path, required=True, help="manifest CSV to write (path,label,patient_id)")
    args = ap.parse_args(argv)
    found = rows(args.lungmasks)
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient_id"])
        w.writerows(found)
    n_pos = sum(label == "PNEUMONIA" for _, label, _ in found)
    print(f"{args.out}: {len(found) - n_pos} NORMAL, {n_pos} PNEUMONIA")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
