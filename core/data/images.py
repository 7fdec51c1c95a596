"""The one image loader: any supported file, path, bytes or upload -> 8-bit grayscale array (H, W).

Training, evaluation, benchmarks and the dashboard all call this module, so that an uploaded film is seen exactly
as the trainer saw its images (docs/design.md, "Image representation").

Choices, and why:

* Formats: JPEG and PNG (through Pillow, chosen by content, not by extension) and DICOM (through pydicom).
  Anything else is refused with ``UnsupportedImageError`` rather than guessed at.
* Colour -> gray with Pillow's ITU-R 601 luma (``convert("L")``). Alpha is dropped, not composited: chest films
  have no meaningful transparency and the pixel values under it are the film.
* More than 8 bits (PNG ``I;16``, ``I``, ``F``; DICOM without a window) -> the image's actual min..max range is
  stretched to 0..255. Dividing by 257 would turn a 12-bit film stored in 16 bits into an almost black image.
  A constant image becomes all zeros (no division by zero). 8-bit images are never stretched.
* EXIF orientation is applied, so a phone photo of a film comes out upright.
* Size guards: the file's size is checked against ``MAX_FILE_BYTES`` and its first bytes for a known format
  before it is read whole; width*height from the header is checked against ``max_pixels`` before any pixel is
  decoded; Pillow's own ``DecompressionBombError`` is reported as ``ImageTooLargeError`` too.
* DICOM rescale and window values that are not finite are refused (they would decode to a black film).
* Nothing partially decoded is returned: Pillow errors during ``load()`` become ``CorruptImageError``
  (``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set).
* A film that decodes to nothing is refused (``BlankImageError``): ``FLAT_SHARE`` of its pixels at one value (a
  DICOM window off the data, a grey rectangle), or a JPEG whose data stops before its declared size (libjpeg
  fills the rest with grey without an error). An image longer than ``MAX_ASPECT``:1 is refused from its header.
  A path that is a named pipe or a device is refused before reading (it would block the loader or never end).
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

MAX_PIXELS: int = 50_000_000  # 2.5x the largest detector (43 cm at 100 um = 18.5 Mpx)
MAX_FILE_BYTES: int = 256 * 2**20  # a film is a few MB; a bigger file is refused before it is read
# model input side: the one bound for flags, configs, config.json and the registry (core.models.registry: the smallest
# side
# every architecture takes)
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 32, 1024
PREPROCESS = ("none", "equalize", "clahe")  # intensity standardisations (core.data.transforms.normalize)
FRAMINGS = ("none", "lungs")  # what a film is cropped to before anything else (core.models.framing)
SUPPORTED_EXTENSIONS = (".jpeg", ".jpg", ".png", ".dcm", ".dicom")

_PIL_FORMATS = ("JPEG", "PNG")  # JPEG includes MPO (multi-picture JPEGs from phones and cameras)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageError(ValueError):
    """Base class; the message names the file and what is wrong with it."""


class UnsupportedImageError(ImageError):
    """Not an image, or a format this project does not read (text file named .png, PDF, TIFF...)."""


class CorruptImageError(ImageError):
    """A supported format that cannot be decoded completely: truncated, damaged or empty."""


class ImageTooLargeError(ImageError):
    """More pixels than allowed: guards against decompression bombs."""


class BlankImageError(CorruptImageError):
    """Decodes, but to (nearly) nothing: one value almost everywhere, or a JPEG whose data stops early (the decoder
    fills the rest with grey). Such a film would still get a probability, of nothing."""


MAX_ASPECT = 10  # a chest film is about 1:1.3; 50000 x 1 is not a film, and resizing it to a square means nothing
FLAT_SHARE = 0.99  # a film with this share of its pixels at one value shows nothing
MIN_JUDGED_PIXELS = 64 * 64  # smaller images (icons, test fixtures) are too small to judge as blank
JPEG_FILL = 128  # what libjpeg decodes missing blocks to (DC 0), in gray


def load_xray(source, *, name=None, max_pixels=None, draft_size=None) -> np.ndarray:
    """Decode ``source`` (str, Path, bytes or file-like) to a uint8 grayscale array of shape (H, W).

    ``name`` is used in error messages (uploads have no path). ``draft_size`` lets the JPEG decoder downsample
    by a power of two while decoding (the result stays >= draft_size on each side): a big speed-up on full-size
    films that are going to be resized anyway.
    """
    data, name = _read_source(source, name)
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    if not data:
        raise CorruptImageError(f"{name}: empty file")
    if data[:8] != _PNG_MAGIC and data[:3] != _JPEG_MAGIC and _looks_like_dicom(data, name):
        return _load_dicom(data, name, limit)
    return _load_pil(data, name, limit, draft_size)


def resize_square(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize to (size, size) uint8, aspect ratio not kept (as in the Kermany 224 px copy).

    Pillow's BILINEAR resize is area-aware (its kernel widens when shrinking), so downscaling is antialiased;
    ``reducing_gap`` first box-reduces by an integer factor, which is faster and visually the same.
    """
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"resize_square expects a 2-D uint8 array, got {gray.dtype} {gray.shape}")
    size = int(size)
    if not 1 <= size <= MAX_INPUT_SIZE:
        raise ValueError(f"size must be in [1, {MAX_INPUT_SIZE}], got {size}")
    if gray.shape == (size, size):
        return gray.copy()
    img = Image.fromarray(gray, mode="L")
    # np.array (not asarray) so callers get a writable array torch can wrap without a warning
    return np.array(img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0), dtype=np.uint8)


def load_for_model(source, size, *, name=None, max_pixels=None) -> np.ndarray:
    """Load and resize to the model's square input: the path every caller (trainer, cache, dashboard) uses."""
    return resize_square(load_xray(source, name=name, max_pixels=max_pixels, draft_size=size), size)


# ---------------------------------------------------------------------------------------------------------------


def _read_source(source, name):
    """Return (bytes, display name). The first bytes are checked for a known format and the size against
    ``MAX_FILE_BYTES`` before the rest is read, so a huge or non-image file is refused without reading it whole."""
    if isinstance(source, (str, os.PathLike)):
        name = name or str(source)
        try:  # non-blocking open, then a regular-file check: a named pipe must not hang the loader
            with os.fdopen(os.open(source, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)), "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise UnsupportedImageError(f"{name}: not a regular file (a pipe, device or folder)")
                return _read_checked(f, name, st.st_size), name
        except OSError as e:
            raise ImageError(f"{name}: cannot read file ({e.strerror or e})") from e
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "<bytes>"
        return _read_checked(io.BytesIO(source), name, len(source)), name
    if hasattr(source, "read"):
        name = name or str(getattr(source, "name", "") or "<upload>")
        size = None
        if hasattr(source, "seek"):
            try:
                size = source.seek(0, io.SEEK_END)
                source.seek(0)
            except (OSError, ValueError):
                size = None
        return _read_checked(source, name, size), name
    raise TypeError(f"unsupported image source type: {type(source).__name__}")


def _read_checked(f, name: str, size: int | None) -> bytes:
    head = f.read(132)
    if not isinstance(head, (bytes, bytearray)):
        raise TypeError(f"{name}: file-like source must be opened in binary mode")
    if not head:
        raise CorruptImageError(f"{name}: empty file")
    if head[:8] != _PNG_MAGIC and head[:3] != _JPEG_MAGIC and not _looks_like_dicom(head, name):
        raise UnsupportedImageError(f"{name}: not a JPEG, PNG or DICOM image")
    limit = MAX_FILE_BYTES
    if size is not None and size > limit:
        raise ImageTooLargeError(f"{name}: file is {size:,} bytes, more than the limit of {limit:,}")
    data = bytes(head) + f.read(limit + 1 - len(head))
    if len(data) > limit:
        raise ImageTooLargeError(f"{name}: file is more than the limit of {limit:,} bytes")
    return data


def _looks_like_dicom(data: bytes, name: str) -> bool:
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def _check_size(width: int, height: int, limit: int, name: str) -> None:
    if width * height > limit:
        raise ImageTooLargeError(
            f"{name}: image is {width}x{height} = {width * height:,} pixels, more than the limit of {limit:,}"
        )
    if width < 1 or height < 1:
        raise CorruptImageError(f"{name}: image is {width}x{height} pixels: nothing to show")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise UnsupportedImageError(f"{name}: image is {width}x{height} pixels, longer than {MAX_ASPECT}:1; "
                                    "not a chest film")


def _check_content(gray: np.ndarray, name: str, jpeg: bool = False) -> np.ndarray:
    """Refuse a decoded film that shows nothing (``BlankImageError``): ``FLAT_SHARE`` of its pixels at one value
    (an all-black DICOM window, a grey rectangle), or a JPEG whose last rows are all decoder fill (its data stops
    before the size its header declares)."""
    if gray.size < MIN_JUDGED_PIXELS:
        return gray
    counts = np.bincount(gray.ravel(), minlength=256)
    value = int(counts.argmax())
    if counts[value] >= FLAT_SHARE * gray.size:
        raise BlankImageError(f"{name}: {100 * counts[value] / gray.size:.1f}% of its pixels are the one value "
                              f"{value}: the film shows nothing to score")
    if jpeg:
        h = gray.shape[0]
        filled = np.flatnonzero(~(gray == JPEG_FILL).all(axis=1))
        fill_rows = h - 1 - int(filled[-1]) if filled.size else h
        if fill_rows >= max(8, h // 20):
            raise BlankImageError(f"{name}: the JPEG's data stops {fill_rows} rows before the {h} its header "
                                  "declares (the rest is decoder fill): the file is truncated")
    return gray


def _load_pil(data: bytes, name: str, limit: int, draft_size) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # Our own limit (checked below, from the header) replaces Pillow's warning band.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{name}: {e}") from e
    except UnidentifiedImageError as e:
        if data[:8] == _PNG_MAGIC or data[:3] == _JPEG_MAGIC:
            kind = "PNG" if data[:8] == _PNG_MAGIC else "JPEG"
            raise CorruptImageError(f"{name}: damaged {kind} header") from e
        raise UnsupportedImageError(f"{name}: not a JPEG, PNG or DICOM image") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise CorruptImageError(f"{name}: cannot read image header ({e})") from e

    with img:
        _check_size(img.width, img.height, limit, name)
        if draft_size and isinstance(img, JpegImagePlugin.JpegImageFile) and img.mode in ("L", "RGB"):
            img.draft("L", (int(draft_size), int(draft_size)))
        try:
            img.load()
            img = ImageOps.exif_transpose(img)
        except Image.DecompressionBombError as e:
            raise ImageTooLargeError(f"{name}: {e}") from e
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as e:
            raise CorruptImageError(f"{name}: cannot decode {img.format or 'image'} ({e})") from e
        return _check_content(_to_gray8(img), name, jpeg=data[:3] == _JPEG_MAGIC)


def _to_gray8(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> uint8 (H, W); see the module docstring for the rules."""
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in _HIGH_BIT_MODES:
        return _stretch(np.asarray(img, dtype=np.float64))
    if mode in ("LA", "La"):
        return np.asarray(img.getchannel(0), dtype=np.uint8).copy()
    if mode in ("P", "PA"):
        img = img.convert("RGBA")  # resolves the palette (and palette transparency) before dropping alpha
    elif mode not in ("RGB", "RGBA", "1"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBa...
    return np.asarray(img.convert("L"), dtype=np.uint8).copy()


def _stretch(arr: np.ndarray) -> np.ndarray:
    """Map the array's actual min..max onto 0..255; a constant array (or one with no finite value) -> zeros."""
    arr = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (np.where(finite, arr, lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _window(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear DICOM window (PS3.3 C.11.2.1.2, simplified to center +- width/2) onto 0..255."""
    lo = center - width / 2.0
    out = (arr - lo) * (255.0 / width)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _first(value):
    """WindowCenter/WindowWidth may hold several windows; the first is the default one. None when absent."""
    if value is not None and not isinstance(value, (str, bytes, int, float)):
        value = value[0] if len(value) else None  # pydicom MultiValue
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _require_finite(ds, key: str, name: str) -> None:
    """A NaN or infinite rescale/window would decode to an all-black film that still gets scored: refuse it."""
    try:
        raw = ds.get(key)
    except Exception:  # a value pydicom cannot even parse
        raw = "?"
    if raw is None or raw == "":
        return
    value = _first(raw)
    if value is None or not math.isfinite(value):
        raise CorruptImageError(f"{name}: DICOM {key} is {raw!s:.40} (not a finite number); "
                                "refusing to guess the film's intensities")


def _load_dicom(data: bytes, name: str, limit: int) -> np.ndarray:
    """DICOM -> uint8: first frame, modality rescale, window (else min-max), MONOCHROME1 inverted, RGB -> luma."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as e:  # pydicom raises many types on garbage input
        if data[128:132] != b"DICM":
            raise UnsupportedImageError(f"{name}: not a JPEG, PNG or DICOM image") from e
        raise CorruptImageError(f"{name}: cannot parse DICOM ({e})") from e
    if "PixelData" not in ds:
        if data[128:132] != b"DICM" and len(ds) == 0:
            raise UnsupportedImageError(f"{name}: not a JPEG, PNG or DICOM image")
        raise UnsupportedImageError(f"{name}: DICOM file has no pixel data (not an image)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    except (AttributeError, TypeError, ValueError) as e:
        raise CorruptImageError(f"{name}: DICOM header lacks a usable image size ({e})") from e
    _check_size(cols, rows, limit, name)

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        if frames > 1:
            ds.pixel_array_options(index=0)
        arr = ds.pixel_array
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
    except Exception as e:  # pydicom raises many types; any failure here means no trustworthy pixels
        if syntax is not None and getattr(syntax, "is_compressed", False):
            raise UnsupportedImageError(
                f"{name}: cannot decode DICOM transfer syntax {getattr(syntax, 'name', syntax)} ({e})"
            ) from e
        raise CorruptImageError(f"{name}: cannot decode DICOM pixel data ({e})") from e

    arr = np.asarray(arr)
    if photometric.startswith("MONOCHROME"):
        if arr.ndim == 3:  # defensive: a multi-frame array despite index=0
            arr = arr[0]
        for key in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
            _require_finite(ds, key, name)
        arr = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        if not np.isfinite(arr).any():
            raise CorruptImageError(f"{name}: DICOM pixel values are not finite after the modality rescale")
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        out = _window(arr, center, width) if center is not None and width and width > 0 else _stretch(arr)
        return _check_content((255 - out) if photometric == "MONOCHROME1" else out, name)  # a window off the data
    if arr.ndim == 3 and arr.shape[-1] == 3:  # RGB (pydicom converts YBR to RGB) or palette colour
        if arr.dtype == np.uint8:
            return _check_content(np.asarray(Image.fromarray(arr, mode="RGB").convert("L"), dtype=np.uint8), name)
        return _check_content(_stretch(arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])), name)
    raise UnsupportedImageError(f"{name}: unsupported DICOM photometric interpretation {photometric}")
