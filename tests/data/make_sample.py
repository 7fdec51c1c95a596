"""Rebuild this folder's sample from a full copy of the data set (run once by a maintainer, not by the tests).

    python tests/data/make_sample.py ../shared/data

kermany224/: byte-for-byte copies of 224 px films. Its train/ films are test-split films of the committed run
(artifacts/kermany-lineup), one per patient, so that its checkpoints can be checked against its stored
predictions in a fresh clone; plus the 224 px twin of the first full-size NORMAL film; plus the validation films
that tests/test_cam_scale.py's scale check reads (the 20 most confidently NORMAL and PNEUMONIA validation films of
each model it checks); val/ is the whole 16-film official validation split. kermany_fullres/: a few full-size
films downscaled to 560 px on the short side (JPEG quality 85), still larger than any model input and decoded the
same way. nih_adult/: adult films of the populations run's test split (artifacts/populations), one per patient,
balanced by class and view, stored at 224 px as lossless PNG through the project's own loader, so a 224 px model
sees the same pixels as from the 512 px originals and its stored predictions can be checked in a fresh clone.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

HERE = Path(__file__).resolve().parent
RUN = HERE.parents[1] / "artifacts" / "kermany-lineup"
PER_CLASS = 90
SCALE_CHECKED = ("mobilenet_v2", "efficientnet_lite0", "small_cnn")  # tests/test_cam_scale.py
CONFIDENT = 20
FULLRES_SIDE = 560
POP_RUN = HERE.parents[1] / "artifacts" / "populations"
ADULT_PER_CELL = 10  # films per (class, view)
ADULT_SIZE = 224


def main(shared: Path) -> None:
    src224, srcfull = shared / "kermany224", shared / "kermany_fullres"
    split = pd.read_csv(RUN / "split.csv")
    test = split[split["split"] == "test"].drop_duplicates("patient_id")
    chosen = [p for label in (0, 1) for p in sorted(test.loc[test["label"] == label, "path"])[:PER_CLASS]]
    first_full = {cls: sorted((srcfull / "train" / cls).glob("*.jpeg"))[0] for cls in ("NORMAL", "PNEUMONIA")}
    chosen.append(f"train/NORMAL/{first_full['NORMAL'].name}")
    for name in SCALE_CHECKED:  # as trainer.explain.scale_check picks them
        val = pd.read_csv(RUN / name / "predictions_val.csv").sort_values("probability", kind="stable")
        chosen += [p for p in pd.concat([val.head(CONFIDENT), val.tail(CONFIDENT)])["path"] if p not in chosen]
    chosen += [str(p.relative_to(src224)) for p in sorted((src224 / "val").glob("*/*.jpeg"))]
    for rel in chosen:
        (HERE / "kermany224" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src224 / rel, HERE / "kermany224" / rel)
    full = list(first_full.values())
    full += [p for cls in ("NORMAL", "PNEUMONIA") for p in sorted((srcfull / "val" / cls).glob("*.jpeg"))[:4]]
    for path in full:
        out = HERE / "kermany_fullres" / path.relative_to(srcfull)
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as im:
            scale = FULLRES_SIDE / min(im.size)
            im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS).save(out, quality=85)


def adult_sample(shared: Path) -> None:
    """tests/data/nih_adult: NORMAL/ and PNEUMONIA/ PNGs at 224 px and a manifest.tsv with the original's columns."""
    sys.path.insert(0, str(HERE.parents[1]))
    from core.data.images import load_for_model

    split = pd.read_csv(POP_RUN / "split.csv", keep_default_na=False)
    test = split[(split["split"] == "test") & (split["source"] == "nih_adult")].drop_duplicates("patient_id")
    manifest = pd.read_csv(shared / "nih_adult" / "manifest.tsv", sep="\t", dtype=str)
    rows = []
    for label in (0, 1):
        for view in ("AP", "PA"):
            cell = test[(test["label"] == label) & (test["view"] == view)].sort_values("path")
            rows += cell["path"].head(ADULT_PER_CELL).tolist()
    out = HERE / "nih_adult"
    kept = []
    for rel in rows:
        file = rel.removeprefix("nih_adult/")
        target = out / file
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = load_for_model(shared / "nih_adult" / file, ADULT_SIZE)
        Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(target)
        kept.append(file)
    columns = ["file", "class", "patient_id", "age", "sex", "view", "nih_finding_labels_v2020"]
    manifest[manifest["file"].isin(kept)][columns].sort_values("file").to_csv(out / "manifest.tsv", sep="\t",
                                                                              index=False)


if __name__ == "__main__":
    if sys.argv[2:] == ["--adults"]:
        adult_sample(Path(sys.argv[1]))
    else:
        main(Path(sys.argv[1]))
