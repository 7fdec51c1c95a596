"""core.data.images: every format and mode we promise, and a typed error for every bad input."""

import io
import struct
import zlib

import numpy as np
import pytest
from conftest import write_dicom
from PIL import Image

from core.data import images
from core.data.images import (
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    load_for_model,
    load_xray,
    resize_square,
)


def _first(folder, pattern):
    return sorted(folder.glob(pattern))[0]


def _gradient(h=32, w=48):
    return np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))


def _png_header_only(width, height):
    """A PNG whose header claims width x height but holds almost no data: a decompression bomb's shape."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _mode(path):
    with Image.open(path) as img:
        return img.mode


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


# ----------------------------------------------------------------------------------------------- real files


def test_real_224_jpeg_loads_as_gray_uint8(kermany224):
    arr = load_xray(_first(kermany224, "train/NORMAL/*.jpeg"))
    assert arr.dtype == np.uint8 and arr.shape == (224, 224)
    assert arr.std() > 10  # an actual film, not a blank


def test_full_size_draft_is_smaller_but_at_least_requested_and_matches_full_decode(fullres):
    path = _first(fullres, "train/PNEUMONIA/*.jpeg")
    full = load_xray(path)
    drafted = load_xray(path, draft_size=224)
    assert min(full.shape) > 500
    assert drafted.shape[0] < full.shape[0] and min(drafted.shape) >= 224
    fast = load_for_model(path, 224)
    slow = resize_square(full, 224)
    assert fast.shape == (224, 224) and fast.dtype == np.uint8
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 3


def test_resize_matches_the_kermany_224_copy(kermany224, fullres):
    """The 224 copy was made from the full-size films; our resize must see those images the same way."""
    full = _first(fullres, "train/NORMAL/*.jpeg")
    small = kermany224 / "train/NORMAL" / full.name
    ours = load_for_model(full, 224).astype(int)
    theirs = load_xray(small).astype(int)
    assert np.abs(ours - theirs).mean() < 4


def test_every_source_kind_gives_the_same_array(tmp_path):
    path = _save(Image.fromarray(_gradient()), tmp_path / "g.png")
    data = path.read_bytes()
    ref = load_xray(path)
    assert np.array_equal(ref, _gradient())
    for src in (str(path), data, bytearray(data), memoryview(data), io.BytesIO(data)):
        assert np.array_equal(load_xray(src), ref)
    with open(path, "rb") as f:
        f.read(5)  # a partly read upload is read from the start
        assert np.array_equal(load_xray(f), ref)


def test_extension_does_not_decide_the_format(tmp_path):
    """A JPEG saved as .png (common in downloaded data sets) still loads."""
    path = _save(Image.fromarray(_gradient()), tmp_path / "really_a_jpeg.png", format="JPEG", quality=95)
    assert np.abs(load_xray(path).astype(int) - _gradient()).max() < 8


# ----------------------------------------------------------------------------------------------- bad inputs


def test_truncated_jpeg_is_corrupt(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)).save(buf, "JPEG")
    path = tmp_path / "cut.jpeg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(CorruptImageError, match="cut.jpeg"):
        load_xray(path)


def test_truncated_png_is_corrupt(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)).save(buf, "PNG")
    with pytest.raises(CorruptImageError, match="cut.png"):
        load_xray(buf.getvalue()[:2000], name="cut.png")


def test_damaged_png_header_is_corrupt_not_unsupported():
    with pytest.raises(CorruptImageError, match="PNG"):
        load_xray(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, name="x.png")


def test_text_file_named_png_is_unsupported(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n" * 20)
    with pytest.raises(UnsupportedImageError, match="notes.png"):
        load_xray(path)


@pytest.mark.parametrize("payload, fname", [
    (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n" * 10, "report.pdf"),
    (b"GIF89a" + b"\x00" * 100, "anim.jpeg"),
    (b"plain text " * 30, "scan.dcm"),  # .dcm name but not DICOM
])
def test_other_files_are_unsupported(payload, fname):
    with pytest.raises(UnsupportedImageError, match=fname.replace(".", r"\.")):
        load_xray(payload, name=fname)


def test_tiff_is_refused_even_though_pillow_reads_it():
    buf = io.BytesIO()
    Image.fromarray(_gradient()).save(buf, "TIFF")
    with pytest.raises(UnsupportedImageError):
        load_xray(buf.getvalue(), name="film.tiff")


def test_empty_file_is_corrupt(tmp_path):
    path = tmp_path / "empty.jpeg"
    path.write_bytes(b"")
    with pytest.raises(CorruptImageError, match="empty.jpeg.*empty"):
        load_xray(path)


def test_bytes_error_names_the_upload_and_errors_are_value_errors():
    with pytest.raises(ImageError, match="upload_17.jpg") as info:
        load_xray(b"garbage bytes", name="upload_17.jpg")
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnsupportedImageError, match="<bytes>"):
        load_xray(b"garbage bytes")


def test_missing_file_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="nope.png"):
        load_xray(tmp_path / "nope.png")


def test_wrong_source_type_is_a_type_error():
    with pytest.raises(TypeError):
        load_xray(12345)


# ------------------------------------------------------------------------------------------------ size guard


def test_header_claiming_too_many_pixels_is_refused_before_decoding():
    # 13000 x 13000 = 169 Mpx: above our limit, below Pillow's own error threshold (~179 Mpx).
    with pytest.raises(ImageTooLargeError, match="13000x13000"):
        load_xray(_png_header_only(13000, 13000), name="bomb.png")


def test_pillow_decompression_bomb_error_becomes_too_large():
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        load_xray(_png_header_only(30000, 30000), name="bomb.png", max_pixels=10**12)


def test_max_pixels_argument_and_module_constant(tmp_path, monkeypatch):
    path = _save(Image.fromarray(_gradient(32, 48)), tmp_path / "g.png")
    with pytest.raises(ImageTooLargeError):
        load_xray(path, max_pixels=1000)
    assert load_xray(path, max_pixels=32 * 48).shape == (32, 48)
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(ImageTooLargeError):
        load_xray(path)


# ----------------------------------------------------------------------------------------------------- modes


def test_16bit_png_gradient_keeps_order_and_spans_full_range(tmp_path):
    values = np.tile(np.linspace(1000, 5000, 64).astype(np.uint16), (8, 1))  # a 12-bit film in 16 bits
    path = _save(Image.fromarray(values), tmp_path / "g16.png")
    assert _mode(path).startswith("I;16")
    out = load_xray(path)
    assert out.dtype == np.uint8 and out.shape == (8, 64)
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[0].astype(int)) >= 0) and len(np.unique(out[0])) > 50


def test_constant_16bit_image_gives_zeros_without_warnings(tmp_path, recwarn):
    path = _save(Image.fromarray(np.full((10, 10), 4000, dtype=np.uint16)), tmp_path / "flat16.png")
    out = load_xray(path)
    assert out.dtype == np.uint8 and not out.any()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_32bit_int_and_float_modes_are_stretched():
    ints = Image.fromarray(np.arange(100, dtype=np.int32).reshape(10, 10) * 1000 - 50000)
    floats = Image.fromarray(np.linspace(-1, 1, 100, dtype=np.float32).reshape(10, 10))
    assert (ints.mode, floats.mode) == ("I", "F")
    for img in (ints, floats):
        out = images._to_gray8(img)
        assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
        assert np.all(np.diff(out.ravel().astype(int)) >= 0)


def test_la_and_rgba_drop_alpha(tmp_path):
    gray = _gradient()
    alpha = np.zeros_like(gray)  # fully transparent: the film underneath is still what we return
    la = _save(Image.fromarray(np.dstack([gray, alpha]), mode="LA"), tmp_path / "la.png")
    rgba = _save(Image.fromarray(np.dstack([gray, gray, gray, alpha]), mode="RGBA"), tmp_path / "rgba.png")
    assert _mode(la) == "LA" and _mode(rgba) == "RGBA"
    assert np.array_equal(load_xray(la), gray)
    assert np.abs(load_xray(rgba).astype(int) - gray).max() <= 1


def test_rgb_uses_luma(tmp_path):
    rgb = np.zeros((4, 3, 3), dtype=np.uint8)
    rgb[:, 0, 0], rgb[:, 1, 1], rgb[:, 2, 2] = 255, 255, 255  # pure red, green, blue columns
    out = load_xray(_save(Image.fromarray(rgb), tmp_path / "rgb.png"))
    assert out.shape == (4, 3)
    assert list(out[0]) == [76, 150, 29]  # ITU-R 601: 0.299, 0.587, 0.114


def test_palette_with_transparency(tmp_path, recwarn):
    img = Image.fromarray(_gradient()).convert("P")
    path = _save(img, tmp_path / "p.png", transparency=bytes([0, 128] + [255] * 254))  # per-entry alpha
    with Image.open(path) as img:
        assert img.mode == "P" and isinstance(img.info["transparency"], bytes)
    out = load_xray(path)
    assert out.shape == (32, 48) and np.abs(out.astype(int) - _gradient()).max() <= 8
    assert not [w for w in recwarn if "Transparency" in str(w.message)]


def test_cmyk_jpeg(tmp_path):
    img = Image.fromarray(np.dstack([_gradient()] * 3)).convert("CMYK")
    path = _save(img, tmp_path / "cmyk.jpg", quality=95)
    assert _mode(path) == "CMYK"
    out = load_xray(path)
    assert out.shape == (32, 48)
    assert np.corrcoef(out.ravel(), _gradient().ravel())[0, 1] > 0.99


def test_bilevel_mode_1(tmp_path):
    arr = np.zeros((8, 8), dtype=bool)
    arr[:, 4:] = True
    out = load_xray(_save(Image.fromarray(arr), tmp_path / "bw.png"))
    assert set(np.unique(out)) == {0, 255} and out[0, 0] == 0 and out[0, 7] == 255


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((40, 80), dtype=np.uint8)
    arr[:20, :40] = 255  # bright top-left quarter
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(img, tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_xray(path)
    assert out.shape == (80, 40)
    expected = np.rot90(arr, k=-1)
    assert np.abs(out.astype(int) - expected).mean() < 5
    assert out[5, 35] > 200 and out[5, 5] < 50  # the bright block is now top-right


# ----------------------------------------------------------------------------------------------------- DICOM


def test_dicom_monochrome2_min_max_and_monochrome1_inverted(tmp_path):
    pix = np.tile(np.linspace(100, 3000, 32).astype(np.uint16), (16, 1))
    m2 = load_xray(write_dicom(tmp_path / "m2.dcm", pix))
    m1 = load_xray(write_dicom(tmp_path / "m1.dcm", pix, photometric="MONOCHROME1"))
    assert m2.dtype == np.uint8 and m2.shape == (16, 32)
    assert m2[0, 0] == 0 and m2[0, -1] == 255 and np.all(np.diff(m2[0].astype(int)) >= 0)
    assert np.array_equal(m1, 255 - m2)


def test_dicom_rescale_then_window(tmp_path):
    stored = np.array([[0, 500, 1000, 1250, 1500, 2000]], dtype=np.uint16)
    # HU = 2 * stored - 2000 -> -2000, -1000, 0, 500, 1000, 2000; window 0 +- 1000
    out = load_xray(write_dicom(tmp_path / "w.dcm", stored, slope=2, intercept=-2000, center=0, width=2000))
    assert list(out[0]) == [0, 0, 128, 191, 255, 255]
    # same values, window given as multi-valued (several presets): the first one is used
    out2 = load_xray(write_dicom(tmp_path / "w2.dcm", stored, slope=2, intercept=-2000, center=[0, 400],
                            width=[2000, 100]))
    assert np.array_equal(out, out2)
    # without the rescale the window would sit elsewhere: proves slope/intercept are applied
    raw = load_xray(write_dicom(tmp_path / "w3.dcm", stored, center=0, width=2000))
    assert list(raw[0]) == [128, 191, 255, 255, 255, 255]


def test_dicom_signed_pixels_min_max(tmp_path):
    pix = np.array([[-1000, 0, 1000]], dtype=np.int16)
    assert list(load_xray(write_dicom(tmp_path / "s.dcm", pix))[0]) == [0, 128, 255]


def test_dicom_without_preamble_detected_by_extension(tmp_path):
    pix = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    path = write_dicom(tmp_path / "raw.dcm", pix, preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    assert load_xray(path).tolist() == [[0, 85], [170, 255]]


def test_dicom_detected_by_magic_whatever_the_name(tmp_path):
    pix = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    data = write_dicom(tmp_path / "a.dcm", pix).read_bytes()
    assert load_xray(data, name="upload.bin").tolist() == [[0, 85], [170, 255]]


def test_dicom_multiframe_uses_first_frame(tmp_path):
    frames = np.stack([np.array([[0, 100], [200, 300]], dtype=np.uint16), np.full((2, 2), 7, dtype=np.uint16)])
    out = load_xray(write_dicom(tmp_path / "mf.dcm", frames, frames=2))
    assert out.tolist() == [[0, 85], [170, 255]]


def test_dicom_rgb_to_gray(tmp_path):
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[:, 0, 0], rgb[:, 1, 1], rgb[:, 2, 2] = 255, 255, 255
    out = load_xray(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    assert out.shape == (2, 3) and list(out[0]) == [76, 150, 29]


def test_dicom_too_large_is_refused(tmp_path):
    path = write_dicom(tmp_path / "big.dcm", np.zeros((40, 40), dtype=np.uint16))
    with pytest.raises(ImageTooLargeError, match="big.dcm"):
        load_xray(path, max_pixels=1000)


def test_dicom_without_pixels_is_unsupported(tmp_path):
    import pydicom

    path = write_dicom(tmp_path / "nopix.dcm", np.zeros((4, 4), dtype=np.uint16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(UnsupportedImageError, match="nopix.dcm.*no pixel data"):
        load_xray(path)


def test_truncated_dicom_is_corrupt(tmp_path):
    data = write_dicom(tmp_path / "t.dcm", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)).read_bytes()
    with pytest.raises(CorruptImageError, match="cut.dcm"):
        load_xray(data[: len(data) - 4000], name="cut.dcm")


# ----------------------------------------------------------------------------------------------------- resize


def test_resize_square_does_not_keep_aspect_and_antialiases():
    stripes = np.zeros((100, 300), dtype=np.uint8)
    stripes[:, ::2] = 255  # 1-pixel stripes average to mid-gray when shrunk properly
    out = resize_square(stripes, 30)
    assert out.shape == (30, 30) and out.dtype == np.uint8
    assert 100 < out.mean() < 155 and out.std() < 20


def test_resize_square_same_size_is_a_copy_and_rejects_bad_input():
    g = _gradient(16, 16)
    out = resize_square(g, 16)
    assert np.array_equal(out, g) and out is not g
    with pytest.raises(ValueError):
        resize_square(np.zeros((4, 4, 3), dtype=np.uint8), 8)
    with pytest.raises(ValueError):
        resize_square(np.zeros((4, 4), dtype=np.float32), 8)


def test_load_for_model_upscales_small_images(tmp_path):
    out = load_for_model(_save(Image.fromarray(_gradient(32, 48)), tmp_path / "s.png"), 64)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert out[0, 0] < out[0, -1]
