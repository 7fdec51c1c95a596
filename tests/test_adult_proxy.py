"""scripts/adult_proxy.py: the adult cross-site proxy manifest (docs/recipes.md) that ``trainer evaluate`` reads."""

from __future__ import annotations

import csv
import subprocess
import sys

from conftest import REPO, SHARED_DATA, missing

from core.data import layouts as data

SCRIPT = REPO / "scripts" / "adult_proxy.py"


def _pairs(root, rows) -> None:
    root.mkdir()
    with open(root / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "stem", "image", "group"])
        w.writerows(rows)


def _run(lungmasks, out) -> list[dict]:
    done = subprocess.run([sys.executable, str(SCRIPT), "--lungmasks", str(lungmasks), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with open(out, newline="") as f:
        return list(csv.DictReader(f))


def test_jsrt_is_normal_the_covid_collection_is_pneumonia_one_row_per_film(tmp_path):
    _pairs(tmp_path / "lm", [["jsrt_scr", "J1", "jsrt_scr/images/J1.jpg", "JSRT:J1"],
                             ["v7_ieee8023", "a", "v7_ieee8023/images/a.jpg", "ieee8023:a.jpg"],
                             ["generalblockchain", "a2", "generalblockchain/images/a2.jpg", "ieee8023:a.jpg"],
                             ["generalblockchain", "b", "generalblockchain/images/b.jpg", "ieee8023:b.jpg"],
                             ["montgomery", "m", "montgomery/images/m.png", "MC:m"]])
    rows = _run(tmp_path / "lm", tmp_path / "m.csv")
    assert [(r["label"], r["patient_id"]) for r in rows] == [
        ("NORMAL", "JSRT:J1"), ("PNEUMONIA", "ieee8023:a.jpg"), ("PNEUMONIA", "ieee8023:b.jpg")]
    assert rows[0]["path"] == str((tmp_path / "lm" / "jsrt_scr" / "images" / "J1.jpg").resolve())


def test_the_shared_set_gives_247_normal_and_463_pneumonia_films_the_trainer_reads(tmp_path):
    lungmasks = SHARED_DATA / "lungmasks"
    if not (lungmasks / "pairs.csv").exists():
        missing(f"no lung-mask set at {lungmasks} (a user's clone): the synthetic case above ran")
    rows = _run(lungmasks, tmp_path / "m.csv")
    assert sum(r["label"] == "NORMAL" for r in rows) == 247 and sum(r["label"] == "PNEUMONIA" for r in rows) == 463
    scan = data.scan(str(tmp_path / "m.csv"))
    assert len(scan.samples) == 710 and not scan.skipped
