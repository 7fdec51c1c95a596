"""Does lung framing cut away consolidations at the lung edge? Checked on the pneumonia films of each source.

    python scripts/framing_check.py --run artifacts/populations [--out docs/framing-check.png] [--cam-model NAME]

For the held-out (val and test) PNEUMONIA films of every source of a run: the lung box each film is cropped to
(core.models.framing), how much of the film it keeps, how often the lung model failed (whole film kept), and, with
``--cam-model`` (an unframed model of the run), the share of that model's Grad-CAM evidence for PNEUMONIA that
falls outside the box: evidence a framed model could never see. Writes a grid of films with their boxes (PNG) and
prints a Markdown table (docs/recipes.md quotes it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.images import load_for_model  # noqa: E402
from core.models.framing import lung_boxes, whole_boxes  # noqa: E402
from core.store import Run  # noqa: E402

SIZE = 224
GRID_PER_SOURCE = 8


def films(run: Run) -> dict[str, list[Path]]:
    """The run's held-out pneumonia films per source, found on this machine."""
    table = run.split_table().fillna("")
    table = table[(table["label"] == 1) & table["split"].isin(["val", "test"])]
    source = table["source"] if "source" in table else [""] * len(table)
    out: dict[str, list[Path]] = {}
    for path, src in zip(table["path"], source):
        found = run.locate(path)
        if found is not None:
            out.setdefault(src or run.id, []).append(found)
    return out


def cam_outside(run: Run, model: str, squares: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Per film, the share of ``model``'s Grad-CAM mass for PNEUMONIA outside its lung box."""
    from core.explain.cams import raw_maps
    from core.models.inference import load_trained

    loaded = load_trained(run.model(model))
    if loaded.input_size != SIZE or run.model(model).config.get("framing", "none") != "none":
        raise SystemExit(f"--cam-model {model}: needs an unframed {SIZE} px model")
    maps = np.concatenate([raw_maps(loaded.model, loaded.spec, loaded.inputs(squares[i:i + 16]), "Grad-CAM",
                                    target=1) for i in range(0, len(squares), 16)])
    inside = np.zeros_like(maps, dtype=bool)
    for i, (top, bottom, left, right) in enumerate(boxes):
        inside[i, top:bottom, left:right] = True
    total = maps.reshape(len(maps), -1).sum(1)
    return np.where(total > 0, (maps * ~inside).reshape(len(maps), -1).sum(1) / np.maximum(total, 1e-12), 0.0)


def grid(examples: dict[str, tuple[np.ndarray, np.ndarray]], out: Path) -> None:
    rows = []
    for squares, boxes in examples.values():
        tiles = []
        for img, (top, bottom, left, right) in zip(squares[:GRID_PER_SOURCE], boxes[:GRID_PER_SOURCE]):
            tile = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
            cv2.rectangle(tile, (int(left), int(top)), (int(right) - 1, int(bottom) - 1), (0, 0, 255), 2)
            tiles.append(tile)
        tiles += [np.zeros_like(tiles[0])] * (GRID_PER_SOURCE - len(tiles))
        rows.append(np.concatenate(tiles, axis=1))
    cv2.imwrite(str(out), np.concatenate(rows, axis=0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--out", default="docs/framing-check.png")
    p.add_argument("--cam-model", help="an unframed model of the run: its Grad-CAM mass outside the lung box")
    args = p.parse_args(argv)
    run = Run(Path(args.run))
    examples = {}
    print("| source | pneumonia films | lung model failed (whole film kept) | box share of the film, median [5th "
          "pct] | box touches the film edge |" + (" CAM mass outside the box, median [95th pct] |"
                                                   if args.cam_model else ""))
    print("|---|---:|---:|---|---:|" + ("---|" if args.cam_model else ""))
    for source, paths in films(run).items():
        squares = np.stack([load_for_model(p, SIZE) for p in paths])
        boxes = lung_boxes(squares)
        whole = (boxes == whole_boxes(len(boxes), SIZE)).all(1)
        share = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2]) / SIZE ** 2
        edge = ((boxes[:, 0] == 0) | (boxes[:, 2] == 0) | (boxes[:, 1] == SIZE) | (boxes[:, 3] == SIZE)) & ~whole
        line = (f"| {source} | {len(paths)} | {whole.mean():.1%} | {np.median(share):.0%} "
                f"[{np.quantile(share, 0.05):.0%}] | {edge.mean():.0%} |")
        if args.cam_model:
            outside = cam_outside(run, args.cam_model, squares, boxes)
            line += f" {np.median(outside):.1%} [{np.quantile(outside, 0.95):.1%}] |"
        print(line)
        examples[source] = (squares, boxes)
    grid(examples, Path(args.out))
    print(f"\ngrid: {args.out} (one row per source, {GRID_PER_SOURCE} pneumonia films, red: the lung box)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
