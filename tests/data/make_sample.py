"""Rebuild this folder's sample from a full copy of the data set (run once by a maintainer, not by the tests).

    python tests/data/make_sample.py ../shared/data

kermany224/: byte-for-byte copies of 224 px films. Its train/ films are test-split films of the committed run
(artifacts/kermany-lineup), one per patient, so that its checkpoints can be checked against its stored
predictions in a fresh clone; plus the 224 px twin of the first full-size NORMAL film; plus the validation films
that tests/test_cam_scale.py's scale check reads (the 20 most confidently NORMAL and PNEUMONIA validation films of
each model it checks); val/ is the whole 16-film official validation split. kermany_fullres/: a few full-size
films downscaled to 560 px on the short side (JPEG quality 85), still larger than any model input and decoded the
same way.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd
from PIL import Image

HERE = Path(__file__).resolve().parent
RUN = HERE.parents[1] / "artifacts" / "kermany-lineup"
PER_CLASS = 90
SCALE_CHECKED = ("mobilenet_v2", "efficientnet_lite0", "small_cnn")  # tests/test_cam_scale.py
CONFIDENT = 20
FULLRES_SIDE = 560


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


if __name__ == "__main__":
    main(Path(sys.argv[1]))
