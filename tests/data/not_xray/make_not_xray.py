"""Rebuild the non-X-ray test images of this folder (see README.md): CC0 / public-domain pictures bundled with
scikit-image (BSD-3; only to rebuild: `pip install --no-deps --target /tmp/skimg scikit-image`, then
`python tests/data/not_xray/make_not_xray.py /tmp/skimg/skimage/data`) and a few generated ones. The dashboard
screenshot (dashboard_home.png) is rendered separately (README.md)."""

from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SIDE = 256
SKIMAGE = {  # file in skimage/data -> saved as
    "astronaut.png": "jpg", "coffee.png": "jpg", "chelsea.png": "jpg", "rocket.jpg": "jpg", "retina.jpg": "jpg",
    "hubble_deep_field.jpg": "jpg", "camera.png": "png", "microaneurysms.png": "png", "text.png": "png",
    "brick.png": "png", "horse.png": "png",
}


def save(a: np.ndarray, name: str, fmt: str) -> None:
    img = Image.fromarray(a)
    img.thumbnail((SIDE, SIDE), Image.Resampling.LANCZOS)
    img.save(HERE / f"{name}.{fmt}", **({"quality": 85} if fmt == "jpg" else {"optimize": True}))


def main(skimage_data: Path) -> None:
    for file, fmt in SKIMAGE.items():
        with Image.open(skimage_data / file) as img:
            a = np.asarray(img.convert("RGB" if img.mode not in ("L", "1") else "L"))
        save((a * 255).astype(np.uint8) if a.dtype == bool else a, Path(file).stem, fmt)
    rng = np.random.default_rng(0)
    save(rng.integers(0, 256, (SIDE // 2, SIDE // 2), dtype=np.uint8), "noise_gray", "png")
    save(rng.integers(0, 256, (SIDE // 2, SIDE // 2, 3), dtype=np.uint8), "noise_colour", "png")
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    save(((x + y) * 255 // (2 * SIDE - 2)).astype(np.uint8), "gradient", "png")
    save(np.full((SIDE // 2, SIDE), 250, np.uint8), "blank", "png")


if __name__ == "__main__":
    import sys

    main(Path(sys.argv[1]))
