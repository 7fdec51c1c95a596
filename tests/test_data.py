"""core.data.layouts: patient ids, the three layouts, and patient-grouped stratified splits."""

import os
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from core.data.layouts import (
    EXCLUDED,
    DataError,
    Sample,
    assign_splits,
    check_no_patient_overlap,
    check_splits_usable,
    fingerprint,
    patient_id,
    scan,
    split_counts,
)
from tests.conftest import KERMANY224_COUNTS


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path, format="PNG")
    return path


def _real_file_list(kermany224):
    """Samples built from the real Kermany file names (pixels are not read)."""
    out = []
    for split in ("train", "val"):
        for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
            folder = kermany224 / split / cls
            out += [Sample(str(folder / n), label, patient_id(n), split) for n in sorted(os.listdir(folder))]
    return out


def _synthetic(n_patients=60, seed=0):
    """Patients with 1-4 images each, about 1/3 NORMAL."""
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        label = int(p % 3 != 0)
        for i in range(int(rng.integers(1, 5))):
            out.append(Sample(f"/data/p{p}_{i}.png", label, f"p{p}", None))
    return out


def _by_patient(samples):
    d = defaultdict(set)
    for s in samples:
        d[s.patient_id].add(s.split)
    return d


# ------------------------------------------------------------------------------------------------ patient ids


@pytest.mark.parametrize("name, expected", [
    ("person1234_bacteria_567.jpeg", "person1234"),
    ("person1234_virus_89.jpeg", "person1234"),
    ("person447_virus_921_1.jpeg", "person447"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("IM-0429-0001-0002.jpeg", "IM-0429"),
    ("NORMAL2-IM-0372-0001.jpeg", "IM-0372"),
    ("NORMAL2-IM-0372-0001-0002.jpeg", "IM-0372"),
    ("/some/dir/train/NORMAL/IM-0117-0001.jpeg", "IM-0117"),
    ("scan_0042.png", "scan_0042"),  # unknown pattern: each image is its own patient
    ("person_x.png", "person_x"),
    ("IM-abc.png", "IM-abc"),
    ("case.17.dcm", "case.17"),
])
def test_patient_id(name, expected):
    assert patient_id(name) == expected


def test_same_kermany_patient_in_both_naming_styles():
    assert patient_id("IM-0372-0001.jpeg") == patient_id("NORMAL2-IM-0372-0001.jpeg")
    assert patient_id("person1_bacteria_1.jpeg") == patient_id("person1_virus_6.jpeg")
    assert patient_id("person1_bacteria_1.jpeg") != patient_id("person10_bacteria_1.jpeg")


# ---------------------------------------------------------------------------------------------------- layouts


def test_scan_kermany_layout(tmp_path):
    root = tmp_path / "xr"
    _png(root / "train/NORMAL/IM-0001-0001.png")
    _png(root / "train/normal/IM-0002-0001.jpeg.png")  # class folder matched case-insensitively
    _png(root / "train/PNEUMONIA/person1_virus_1.png")
    _png(root / "val/NORMAL/NORMAL2-IM-0003-0001.png")
    _png(root / "test/Pneumonia/person9_bacteria_2.png")
    (root / "train/NORMAL/readme.txt").write_text("hi")
    (root / "train/NORMAL/.DS_Store").write_bytes(b"x")
    (root / "train/PNEUMONIA/empty.jpeg").write_bytes(b"")
    (root / "train/PNEUMONIA/nested").mkdir()
    (root / "__MACOSX").mkdir()  # other folders in the root are ignored

    result = scan(root)
    assert result.layout == "kermany" and result.root == str(root)
    got = [(os.path.relpath(s.path, root), s.label, s.patient_id, s.split) for s in result.samples]
    train_normal = sorted(["train/NORMAL/IM-0001-0001.png", "train/normal/IM-0002-0001.jpeg.png"])
    assert got == sorted([
        (train_normal[0], 0, "IM-0001", "train"),
        (train_normal[1], 0, "IM-0002", "train"),
        ("train/PNEUMONIA/person1_virus_1.png", 1, "person1", "train"),
        ("val/NORMAL/NORMAL2-IM-0003-0001.png", 0, "IM-0003", "val"),
        ("test/Pneumonia/person9_bacteria_2.png", 1, "person9", "test"),
    ])
    assert all(os.path.isabs(s.path) for s in result.samples)
    assert [s.path for s in result.samples] == sorted(s.path for s in result.samples)
    reasons = {os.path.basename(p): r for p, r in result.skipped}
    assert set(reasons) == {"readme.txt", ".DS_Store", "empty.jpeg", "nested"}
    assert "extension" in reasons["readme.txt"] and reasons[".DS_Store"] == "hidden file"
    assert reasons["empty.jpeg"] == "empty file" and "folder" in reasons["nested"]


def test_scan_real_kermany224(kermany224):
    result = scan(kermany224)
    assert result.layout == "kermany" and not result.skipped
    assert split_counts(result.samples) == KERMANY224_COUNTS  # the full set, or the committed sample


def test_scan_flat_layout(tmp_path):
    _png(tmp_path / "NORMAL/a.png")
    _png(tmp_path / "NORMAL/b.JPG")  # upper-case extension is fine (content is PNG; scan does not read pixels)
    _png(tmp_path / "pneumonia/c.png")
    (tmp_path / "pneumonia/d.gif").write_bytes(b"GIF89a")
    result = scan(str(tmp_path))
    assert result.layout == "flat"
    assert [(os.path.basename(s.path), s.label, s.split) for s in result.samples] == [
        ("a.png", 0, None), ("b.JPG", 0, None), ("c.png", 1, None)]
    assert [os.path.basename(p) for p, _ in result.skipped] == ["d.gif"]


def test_scan_manifest(tmp_path):
    _png(tmp_path / "imgs/one.png")
    _png(tmp_path / "imgs/two.png")
    absolute = _png(tmp_path / "elsewhere/three.png")
    _png(tmp_path / "imgs/four.png")
    (tmp_path / "imgs/notes.txt").write_text("x")
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        "Path,Label,patient_id,split\n"
        "imgs/one.png,normal,pat-A,Train\n"
        "imgs/two.png,1,,\n"
        f"{absolute},Pneumonia,pat-A,test\n"
        "imgs/four.png,0,pat-B,external\n"
        "imgs/missing.png,0,,\n"
        "imgs/notes.txt,0,,\n"
        ",,,\n"
    )
    result = scan(manifest)
    assert result.layout == "manifest" and result.root == str(manifest)
    got = {os.path.basename(s.path): (s.label, s.patient_id, s.split) for s in result.samples}
    assert got == {"one.png": (0, "pat-A", "train"), "two.png": (1, "two", None),
                   "three.png": (1, "pat-A", "test"), "four.png": (0, "pat-B", "external")}
    skipped = dict((os.path.basename(p), r) for p, r in result.skipped)
    assert "not found" in skipped["missing.png"] and "extension" in skipped["notes.txt"]


@pytest.mark.parametrize("body, message", [
    ("path,label\na.png,COVID\n", r"line 2: unknown label 'COVID'"),
    ("file,diagnosis\na.png,0\n", "needs columns path and label"),
    ("path,label\na.png,0\na.png,1\n", "listed twice"),
    ("", "empty"),
])
def test_bad_manifest(tmp_path, body, message):
    _png(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text(body)
    with pytest.raises(DataError, match=message):
        scan(tmp_path / "m.csv")


def test_scan_errors_say_which_layouts_are_accepted(tmp_path):
    with pytest.raises(DataError, match="does not exist.*accepted layouts"):
        scan(tmp_path / "nowhere")
    (tmp_path / "cats").mkdir()
    with pytest.raises(DataError, match="no train/val/test or NORMAL/PNEUMONIA.*accepted layouts"):
        scan(tmp_path)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DataError, match="not a .csv or .tsv manifest"):
        scan(tmp_path / "x.txt")
    (tmp_path / "train" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match="train has no NORMAL or PNEUMONIA"):
        scan(tmp_path)


def test_scan_with_only_unusable_files_is_an_error(tmp_path):
    (tmp_path / "NORMAL").mkdir()
    (tmp_path / "NORMAL" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no supported images.*1 files skipped"):
        scan(tmp_path)


# ----------------------------------------------------------------------------------------------------- splits


def test_real_split_is_grouped_stratified_and_sized(kermany224):
    pool = _real_file_list(kermany224)
    out = assign_splits(pool, seed=0)
    assert len(out) == len(pool) and [s.path for s in out] == [s.path for s in pool]
    check_no_patient_overlap(out)
    assert all(len(splits) == 1 for splits in _by_patient(out).values())
    pool_rate = np.mean([s.label for s in pool])
    counts = split_counts(out)
    assert set(counts) == {"train", "val", "test"}
    for split, frac in (("val", 0.15), ("test", 0.15), ("train", 0.70)):
        n = sum(counts[split].values())
        assert abs(n / len(pool) - frac) < 0.02, (split, n)
        assert abs(counts[split]["PNEUMONIA"] / n - pool_rate) < 0.03, (split, counts[split])
    check_splits_usable(out)


def test_split_is_deterministic_per_seed_and_differs_across_seeds():
    pool = _synthetic(200)
    a = [s.split for s in assign_splits(pool, seed=3)]
    assert a == [s.split for s in assign_splits(list(reversed(pool)), seed=3)][::-1]  # input order does not matter
    assert a == [s.split for s in assign_splits(pool, seed=3)]
    assert a != [s.split for s in assign_splits(pool, seed=4)]


def test_official_val_is_merged_into_the_pool():
    pool = _synthetic(100)
    pool = [Sample(s.path, s.label, s.patient_id, "val" if i < 16 else "train") for i, s in enumerate(pool)]
    out = assign_splits(pool, seed=0)
    official = {s.path for s in pool if s.split == "val"}
    carved = {s.path for s in out if s.split == "val"}
    assert carved != official and len(carved) > len(official)
    assert {s.split for s in out if s.path in official} <= {"train", "val", "test"}
    assert {s.split for s in out} == {"train", "val", "test"}


def test_given_test_is_kept_and_only_val_is_carved():
    pool = _synthetic(100)
    given_test = [Sample(f"/t/q{i}.png", i % 2, f"q{i}", "test") for i in range(20)]
    out = assign_splits(pool + given_test, val_fraction=0.2, seed=1)
    assert out[len(pool):] == given_test
    pool_out = out[: len(pool)]
    assert {s.split for s in pool_out} == {"train", "val"}
    share = sum(s.split == "val" for s in pool_out) / len(pool_out)
    assert 0.12 < share < 0.28


def test_pool_images_of_a_test_patient_are_excluded():
    """The Kermany test folder shares patients with train: those train images must not be trained on."""
    pool = _synthetic(60)
    test = [Sample("/t/x.png", 1, "p1", "test"), Sample("/t/y.png", 0, "p3", "test")]
    out = assign_splits(pool + test, seed=0)
    for s in out[: len(pool)]:
        assert (s.split == EXCLUDED) == (s.patient_id in {"p1", "p3"})
    check_no_patient_overlap(out)
    assert EXCLUDED in split_counts(out)


def test_manifest_split_names_other_than_train_val_stay():
    pool = _synthetic(60)
    ext = [Sample("/e/1.png", 0, "e1", "external"), Sample("/e/2.png", 1, "e2", "external")]
    out = assign_splits(pool + ext, seed=0)
    assert out[len(pool):] == ext
    assert {s.split for s in out[: len(pool)]} == {"train", "val", "test"}  # no "test" given: both carved


def test_mixed_label_patient_stays_whole():
    pool = _synthetic(40) + [Sample(f"/m/{i}.png", i % 2, "mixed", None) for i in range(5)]
    for seed in range(10):
        out = assign_splits(pool, seed=seed)
        assert len({s.split for s in out if s.patient_id == "mixed"}) == 1


def test_small_pool_still_gets_both_classes_in_every_split():
    pool = [Sample(f"/s/{c}{i}.png", c, f"{c}-{i}", "train") for c in (0, 1) for i in range(6)]
    out = assign_splits(pool, seed=0)
    check_splits_usable(out)


def test_bad_fractions_and_empty_pool():
    pool = _synthetic(10)
    with pytest.raises(DataError, match="val_fraction"):
        assign_splits(pool, val_fraction=1.2)
    with pytest.raises(DataError, match="< 1"):
        assign_splits(pool, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DataError, match="no training images"):
        assign_splits([Sample("/t/a.png", 0, "a", "test")])


# ------------------------------------------------------------------------------------------------ checks, counts


def test_check_no_patient_overlap_names_the_patients():
    samples = [Sample("/a.png", 0, "p1", "train"), Sample("/b.png", 0, "p1", "test"),
               Sample("/c.png", 1, "p2", "val"), Sample("/d.png", 1, "p3", None)]
    with pytest.raises(DataError, match=r"1 patients.*p1 in test, train"):
        check_no_patient_overlap(samples)
    check_no_patient_overlap(samples[1:])


def test_split_counts():
    samples = [Sample("/a", 0, "a", "test"), Sample("/b", 1, "b", "train"), Sample("/c", 1, "c", "train"),
               Sample("/d", 0, "d", None)]
    counts = split_counts(samples)
    assert counts == {"train": {"NORMAL": 0, "PNEUMONIA": 2}, "test": {"NORMAL": 1, "PNEUMONIA": 0},
                      "unassigned": {"NORMAL": 1, "PNEUMONIA": 0}}
    assert list(counts) == ["train", "test", "unassigned"]


def test_check_splits_usable_names_empty_class_and_missing_split():
    samples = [Sample("/a", 0, "a", "train"), Sample("/b", 1, "b", "train"), Sample("/c", 1, "c", "val")]
    with pytest.raises(DataError, match=r"split 'val' has no NORMAL images.*split 'test' has no images.*"
                                        r"counts: train: NORMAL 1, PNEUMONIA 1; val: NORMAL 0, PNEUMONIA 1"):
        check_splits_usable(samples)
    check_splits_usable(samples, required=("train",))


def test_fingerprint_tracks_files(tmp_path):
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png")
    samples = [Sample(str(a), 0, "a", "train"), Sample(str(b), 1, "b", "test")]
    fp = fingerprint(samples)
    assert len(fp) == 64 and fp == fingerprint(list(reversed(samples)))
    st = os.stat(a)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    fp2 = fingerprint(samples)
    assert fp2 != fp
    assert fingerprint(samples[:1]) != fp2
    _png(b, value=200)  # rewritten file
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert fingerprint(samples) != fp2
    os.remove(b)
    with pytest.raises(DataError, match="b.png"):
        fingerprint(samples)

