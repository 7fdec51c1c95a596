"""The fair-architecture protocol's parts (issue 21): a one-channel stem, stopping on a flat validation loss, and
distillation from a trained model that must not have seen the student's held-out films."""

import pytest
import torch

from core.models.registry import create_model
from core.store import ArtifactError, Run
from trainer.config import ConfigError, check_value
from trainer.distill import Teacher, check_no_leak, distill_loss
from trainer.train import LOSS_MIN_DELTA, Progress


def test_one_channel_stem_sees_the_grey_level_and_has_a_third_of_the_stem():
    rgb, _ = create_model("resnet18", pretrained=False, input_size=64)
    grey, info = create_model("resnet18", pretrained=False, input_size=64, in_chans=1)
    assert not info.pretrained
    assert grey.conv1[1].in_channels == 1 and grey.conv1[1].weight.shape == (64, 1, 7, 7)
    assert sum(p.numel() for p in rgb.parameters()) - sum(p.numel() for p in grey.parameters()) == 2 * 64 * 7 * 7
    grey.eval()
    x = torch.randn(2, 3, 64, 64)
    same_grey = x.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    with torch.no_grad():  # only the channels' mean reaches the network
        assert torch.allclose(grey(x), grey(same_grey), atol=1e-5)


def test_one_channel_stem_refuses_imagenet_weights():
    with pytest.raises(ValueError, match="three input channels"):
        create_model("mobilenet_v2", pretrained=True, input_size=64, in_chans=1)


def test_config_checks_the_protocol_keys():
    assert check_value("in_chans", 1) == 1 and check_value("stop_on", "val_loss") == "val_loss"
    for key, bad in (("in_chans", 2), ("stop_on", "val_acc"), ("distill_weight", 1.5)):
        with pytest.raises(ConfigError, match=key):
            check_value(key, bad)


def _row(epoch, loss, auc=0.9):
    return {"epoch": epoch, "val_loss": loss, "val_auc": auc}


def test_stop_on_val_loss_waits_for_a_real_fall_and_ignores_auc():
    p = Progress()
    assert p.record(_row(1, 0.50), stop_on="val_loss")
    assert p.record(_row(2, 0.40, auc=0.5), stop_on="val_loss")  # lower loss wins even with a worse AUC
    assert not p.record(_row(3, 0.40 - LOSS_MIN_DELTA / 2, auc=0.99), stop_on="val_loss")  # a flat loss is no gain
    assert not p.record(_row(4, 0.45), stop_on="val_loss")
    assert p.best_epoch == 2 and p.bad_epochs == 2 and p.stopped_early(2) and not p.stopped_early(3)
    by_auc = Progress()
    by_auc.record(_row(1, 0.50, auc=0.8))
    assert not by_auc.record(_row(2, 0.30, auc=0.7))  # the default rule still picks by AUC


def _teacher_run(tmp_path, rows):
    tmp_path.joinpath("split.csv").write_text(
        "path,label,patient_id,split\n" + "".join(f"{p},0,{p},{s}\n" for p, s in rows))
    return Run(tmp_path)


def test_a_teacher_that_trained_on_a_held_out_film_is_refused(tmp_path):
    run = _teacher_run(tmp_path, [("a.png", "train"), ("b.png", "val"), ("c.png", "test")])
    check_no_leak(run, ["b.png", "c.png"])
    with pytest.raises(ArtifactError, match="trained on 1 of this run's"):
        check_no_leak(run, ["a.png", "b.png"])
    with pytest.raises(ArtifactError, match="does not list 1"):  # cannot show it did not: refused too
        check_no_leak(run, ["b.png", "z.png"])


def test_distill_loss_is_zero_only_when_the_student_matches():
    t = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    assert float(distill_loss(t, t, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(-t, t, 2.0)) > 0.1


def test_teacher_sees_the_batch_in_its_own_units_and_size():
    class Net:  # the LoadedModel fields the teacher uses, around a real module
        mean, std, input_size = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 32
        model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    seen = []
    Net.model.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    raw = torch.rand(1, 3, 16, 16)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    Teacher(Net(), mean, std).logits(x)
    assert seen[0].shape[-1] == 32
    assert float(seen[0].mean()) == pytest.approx(float(((raw - 0.5) / 0.5).mean()), abs=1e-4)
