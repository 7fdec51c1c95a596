"""Robust-recipe keys (docs/recipes.md): intensity standardisation as part of the model, random-resized crops,
noise, weight averaging, mixup, the headline threshold rule, and the synthetic shift proxy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import KERMANY224, SAMPLE_DATA, need

from core.data.transforms import AugmentConfig, augment, clahe, equalize, normalize, standardize
from core.evaluate import metrics
from core.models.checkpoints import save_best
from core.models.inference import load_trained, predict_loaded, predict_probabilities
from core.models.registry import create_model, get_spec
from core.store import Run
from trainer import config as cfgmod
from trainer.cli import main
from trainer.robust import WeightAverage, mixup
from trainer.shift import test_split_samples as split_samples
from trainer.shifts import SHIFTS, apply_shift


def _film(seed=0, size=64) -> torch.Tensor:
    """A smooth, film-like (1, 1, S, S) image with many grey levels."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 1, 8, 8, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def test_equalize_removes_any_increasing_grey_level_change():
    x = (_film() * 127).round() * 2 / 255  # even levels only, so the change below merges none of them
    changed = ((x * 255 / 2) + 64) / 255  # half the contrast, brighter: an increasing, one-to-one change
    np.testing.assert_allclose(equalize(x), equalize(changed), atol=1e-6)
    assert not torch.allclose(x, changed)
    e = equalize(x)
    assert e.min() == 0 and e.max() == 1
    order = torch.argsort(x.flatten())
    assert torch.all(torch.diff(e.flatten()[order]) >= 0)  # brighter pixels stay brighter


def test_clahe_stretches_a_flat_film_and_keeps_its_shape():
    flat = 0.45 + 0.1 * _film(1)
    out = clahe(flat)
    assert out.shape == flat.shape and out.dtype == flat.dtype
    assert out.std() > 2 * flat.std()
    with pytest.raises(ValueError, match="preprocess 'hist'"):
        standardize(flat, "hist")


def test_normalize_applies_the_models_preprocess():
    x = 0.45 + 0.1 * _film(2)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    plain, eq = normalize(x, mean, std), normalize(x, mean, std, "equalize")
    assert eq.shape == (1, 3, 64, 64)
    torch.testing.assert_close(eq, normalize(equalize(x), mean, std))
    assert not torch.allclose(plain, eq)


def test_random_resized_crop_zooms_in_and_stays_inside_the_film():
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(16, 1, 64, 64).contiguous()
    still = AugmentConfig(rotate_deg=0, scale=(1, 1), translate=0, brightness=0, contrast=0, gamma=0)
    same = augment(ramp.clone(), still, torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, ramp, atol=1e-5, rtol=0)
    crop = AugmentConfig(rotate_deg=0, scale=(1, 1), translate=0, brightness=0, contrast=0, gamma=0,
                         crop_area_min=0.5)
    def span(image):
        out = augment(image.clone(), crop, torch.Generator().manual_seed(0))  # same seed: same crops
        assert torch.all(out >= 0) and torch.all(out <= 1)
        return out.amax(dim=(1, 2, 3)) - out.amin(dim=(1, 2, 3))

    area = span(ramp) * span(ramp.transpose(2, 3).contiguous())  # width x height of each crop
    assert torch.all(area > 0.45) and torch.all(area < 1.0)  # [0.5, 1] of the film, magnified to full size
    assert area.mean() < 0.85


def test_noise_and_wider_photometric_ranges():
    flat = torch.full((8, 1, 32, 32), 0.5)
    noisy = augment(flat.clone(), AugmentConfig(rotate_deg=0, translate=0, brightness=0, contrast=0, gamma=0,
                                                noise_std=0.05), torch.Generator().manual_seed(0))
    assert 0.005 < noisy.std(dim=(1, 2, 3)).max() < 0.06
    wide = AugmentConfig().scaled(2.0)
    assert wide.gamma == pytest.approx(0.5) and wide.brightness == pytest.approx(0.3) and wide.contrast <= 0.9


def test_weight_average_follows_the_weights_and_round_trips():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    for _ in range(200):
        ema.update(model)
    torch.testing.assert_close(ema.model[0].weight, torch.ones(2, 3), atol=1e-6, rtol=0)
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    ema.update(model)
    w = ema.model[0].weight
    assert torch.all((w > 1.0) & (w < 1.5))  # moved towards the new weights, not onto them
    other = WeightAverage(model, decay=0.9)
    other.load_state_dict(ema.state_dict())
    torch.testing.assert_close(other.model[0].weight, w)
    assert other.steps == ema.steps == 201


def test_mixup_mixes_pairs_and_is_off_at_zero():
    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 2, 2).contiguous()
    y = torch.tensor([0, 1] * 4)
    same, y2, lam = mixup(x, y, 0.0, torch.Generator().manual_seed(0))
    assert lam == 1.0 and same is x and torch.equal(y2, y)
    mixed, partner, lam = mixup(x, y, 0.4, torch.Generator().manual_seed(0))
    assert 0 < lam < 1
    # each mixed image is lam * its own + (1 - lam) * its partner's, and the partner label goes with it
    own = x[:, 0, 0, 0]
    part = (mixed[:, 0, 0, 0] - lam * own) / (1 - lam)
    assert set(part.round().long().tolist()) == set(range(8))
    assert torch.equal(partner, y[part.round().long()])


@pytest.mark.parametrize("key, value, message", [("preprocess", "hist", "preprocess='hist'"),
                                                  ("threshold_rule", "best", "threshold_rule='best'")])
def test_bad_recipe_values_are_config_errors(key, value, message):
    with pytest.raises(cfgmod.ConfigError, match=message):
        cfgmod.entries(cfgmod.build({key: value, "models": ["small_cnn"]}, {}))


def test_headline_rule_defaults_to_youden_for_old_runs():
    assert metrics.headline_rule({}) == "youden"
    assert metrics.headline_rule({"threshold_rule": "sens95"}) == "sens95"


def test_loaded_model_applies_the_preprocess_its_config_records(tmp_path):
    from core.store import ModelWriter
    model, _ = create_model("small_cnn", pretrained=False, input_size=64)
    writer = ModelWriter(tmp_path, "m")
    save_best(model, writer.dir / "checkpoints" / "best.safetensors")
    spec = get_spec("small_cnn")
    writer.config({"arch": "small_cnn", "input_size": 64, "mean": list(spec.mean), "std": list(spec.std),
                   "preprocess": "equalize"})
    loaded = load_trained(Run(tmp_path).model("m"))
    assert loaded.preprocess == "equalize"
    batch = (np.stack([_film(i).numpy()[0, 0] for i in range(4)]) * 120 + 60).astype(np.uint8)
    got = predict_loaded(loaded, batch)
    want = predict_probabilities(loaded.model, batch, spec.mean, spec.std, preprocess="equalize")
    plain = predict_probabilities(loaded.model, batch, spec.mean, spec.std)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.abs(got - plain).max() > 1e-4
    torch.testing.assert_close(loaded.inputs(batch), normalize(equalize(
        torch.from_numpy(batch).float().div(255).unsqueeze(1)), spec.mean, spec.std))


def test_every_shift_keeps_shape_and_changes_the_film():
    films = (np.stack([_film(i, 96).numpy()[0, 0] for i in range(3)]) * 200 + 20).astype(np.uint8)
    films[:, 2:8, 2:8] = 255  # a marker in the corner
    for name in SHIFTS:
        out = apply_shift(name, films)
        assert out.shape == films.shape and out.dtype == np.uint8, name
        assert np.array_equal(out, films) == (name == "none"), name
    assert apply_shift("gamma_dark", films).mean() < films.mean() < apply_shift("gamma_bright", films).mean()
    assert apply_shift("border_crop", films)[:, :6, :6].max() < 255  # the corner marker is gone
    np.testing.assert_array_equal(apply_shift("noise", films), apply_shift("noise", films))  # seeded
    with pytest.raises(KeyError, match="unknown shift"):
        apply_shift("fog", films)


@pytest.mark.train
def test_robust_keys_train_record_and_shift_end_to_end(tmp_path, capsys):
    """The real trainer with every robust key, then ``trainer shift`` on the run it wrote."""
    conf = {"data": str(need(KERMANY224)), "run": "r", "artifacts": str(tmp_path / "a"), "subset": 20,
            "epochs": 2, "input_size": 64, "seed": 0,
            "models": [{"name": "m", "arch": "small_cnn", "lr": 0.001, "preprocess": "clahe", "crop_area_min": 0.7,
                        "photometric_scale": 1.5, "noise_std": 0.02, "ema_decay": 0.9, "mixup_alpha": 0.2,
                        "threshold_rule": "sens95", "tta": 2}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 0
    run = Run(tmp_path / "a" / "r")
    art = run.model("m")
    assert art.config["preprocess"] == "clahe" and art.config["threshold_rule"] == "sens95"
    assert "ema" in torch.load(art.dir / "checkpoints" / "last.pt", weights_only=False)
    capsys.readouterr()
    assert main(["shift", "--run", str(run.dir), "--shifts", "none,gamma_dark,border_crop", "--limit", "24"]) == 0
    out = json.loads((run.dir / "shift.json").read_text())
    assert out["n"] == 24 and list(out["shifts"]) == ["none", "gamma_dark", "border_crop"]
    m = out["models"]["m"]
    assert m["rule"] == "sens95" and set(m["shifts"]) == {"none", "gamma_dark", "border_crop"}
    assert m["shifts"]["none"]["threshold"] == pytest.approx(art.threshold("sens95"))
    assert "| m | sens95 |" in capsys.readouterr().out
    assert m["shifts"]["none"]["at"]["youden"]["threshold"] == pytest.approx(art.threshold("youden"))
    # unshifted, it is the trainer's own test score on the same films; official_val is put beside it
    preds = art.predictions("test")
    preds.index = [str(run.locate(p)) for p in preds["path"]]
    picked = [s.path for s in split_samples(run, 24)]
    assert m["shifts"]["none"]["auc"] == pytest.approx(
        metrics.auc(preds.loc[picked, "label"], preds.loc[picked, "probability"]), abs=1e-3)
    ov = art.metrics("official_val")
    assert m["official_val"]["auc"] == pytest.approx(ov["auc"])
    assert m["official_val"]["at"]["sens95"]["specificity"] == pytest.approx(ov["at"]["sens95"]["specificity"])
    # --models rescored one model into the stored file (same shifts and limit), or says why it cannot
    stored = json.loads((run.dir / "shift.json").read_text())
    stored["models"]["other"] = {**stored["models"]["m"], "mean_auc": 0.5}  # another model's result: must survive
    (run.dir / "shift.json").write_text(json.dumps(stored))
    args = ["shift", "--run", str(run.dir), "--shifts", "none,gamma_dark,border_crop", "--limit", "24"]
    assert main([*args, "--models", "m"]) == 0
    again = json.loads((run.dir / "shift.json").read_text())
    assert again["models"]["other"]["mean_auc"] == 0.5 and again["models"]["m"]["shifts"]["none"]["auc"] == \
        pytest.approx(m["shifts"]["none"]["auc"]) and again["command"].count("trainer shift") == 2
    assert main([*args[:-1], "30", "--models", "m"]) == 2  # another --limit: rerun without --models
    assert main([*args, "--models", "nope"]) == 2


def test_undertrained_rows_are_flagged():
    import pandas as pd

    from core.report.summary import model_row, undertrained

    def hist(*losses):
        return pd.DataFrame({"epoch": range(1, len(losses) + 1), "val_loss": losses})

    assert undertrained({}, hist(0.4, 0.3)) is True  # two epochs: no evidence of convergence
    assert undertrained({}, hist(0.4, 0.3, 0.2)) is True  # still falling clearly
    assert undertrained({}, hist(0.4, 0.2, 0.195)) is False  # flat
    assert undertrained({}, hist(0.4, 0.2, 0.25)) is False  # rising again
    assert undertrained({"early_stopped": True}, hist(0.4, 0.3)) is False
    assert undertrained({}, None) is None
    row = model_row("m", {"arch": "small_cnn", "threshold_rule": "sens95"}, {}, {"at": {"sens95": {"threshold": 0.7}}},
                    hist(0.5))
    assert row["undertrained"] is True and row["rule"] == "sens95" and row["threshold"] == 0.7
    assert model_row("e", {"arch": "ensemble", "members": ["a", "b"]}, {}, {}, None)["undertrained"] is None


def test_recipe_label_names_the_keys_that_made_a_model():
    from core.report.summary import model_row, recipe_label

    assert recipe_label({"arch": "mobilenet_v2", "augment": True, "blur_prob": 0.2}) == "standard"
    assert recipe_label({"arch": "deep_cnn", "augment": False}) == "no aug"
    robust = {"arch": "mobilenet_v2", "preprocess": "clahe", "crop_area_min": 0.75, "ema_decay": 0.995}
    assert recipe_label(robust) == "CLAHE, strong aug, EMA"
    lungs = {**robust, "framing": "lungs", "mixup_alpha": 0.2}
    assert recipe_label(lungs) == "lung crop, CLAHE, strong aug, EMA, mixup"
    assert recipe_label({"arch": "ensemble", "members": ["a", "b", "c"]}) == "mean of 3"
    assert recipe_label(None) == "–"
    assert model_row("m", robust, {}, {})["recipe"] == "CLAHE, strong aug, EMA"


def test_committed_robust_run_reproduces_its_predictions_through_its_preprocess():
    """The committed robust model, loaded as the dashboard loads it, gives the trainer's probabilities back on the
    original films: only because its recorded ``preprocess`` (CLAHE) is applied on the way in."""
    from conftest import REPO

    from core.data.images import load_for_model

    run_dir = REPO / "artifacts" / "kermany-robust"
    if not (run_dir / "run.json").exists():
        pytest.skip("no committed robust run")
    run = Run(run_dir)
    art = run.model("mobilenet_v2_robust")
    loaded = load_trained(art)
    assert loaded.preprocess == "clahe" and metrics.headline_rule(art.config) == "sens95"
    preds = art.predictions("test")
    root = run.data_dir() or SAMPLE_DATA / "kermany224"  # the full data set, or the sample (same layout)
    located = preds["path"].map(lambda p: root / p if (root / p).is_file() else None)
    preds, films = preds[located.notna()].head(6), list(located.dropna().head(6))
    if len(films) < 6:
        pytest.skip("the training films are not on this machine")
    batch = np.stack([load_for_model(f, loaded.input_size) for f in films])
    np.testing.assert_allclose(predict_loaded(loaded, batch), preds["probability"], atol=5e-3)
    plain = predict_probabilities(loaded.model, batch, loaded.mean, loaded.std)
    assert np.abs(plain - preds["probability"].to_numpy()).max() > 5e-3


@pytest.mark.integration
def test_evaluate_quotes_each_model_at_its_own_headline_rule(tmp_path, capsys):
    """``trainer evaluate`` prints the robust model's figures at its sens95 threshold, not Youden's."""
    import shutil

    from conftest import REPO

    src = REPO / "artifacts" / "kermany-robust"
    if not (src / "run.json").exists():
        pytest.skip("no committed robust run")
    run_dir = tmp_path / "kermany-robust"
    shutil.copytree(src, run_dir)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run_dir), "--data", str(need(KERMANY224)), "--split", "val",
                 "--split-name", "again"]) == 0
    out = capsys.readouterr().out
    m = Run(run_dir).model("mobilenet_v2_robust")
    thr = m.threshold("sens95")
    assert f"at val-chosen threshold {thr:.3f} (sens95)" in out
    assert m.metrics("again")["at"]["sens95"]["threshold"] == pytest.approx(thr)
