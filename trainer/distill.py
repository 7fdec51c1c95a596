"""A warm start without ImageNet weights: learn from a trained model's soft labels (knowledge distillation).

Only MobileNetV2 and EfficientNet-Lite0 have ImageNet weights here; the seeds' ResNets, DenseNet and ViT start from
scratch. A recipe with ``distill_from: run/model`` adds to its loss the KL divergence between its tempered
probabilities and those of that trained model (Hinton et al. 2015), on the same augmented batch resized to the
teacher's input size. The teacher must not have trained on any of this run's validation or test films: it is
refused unless its run's split.csv lists every one of them, in validation or test (``check_no_leak``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from core.models.inference import LoadedModel, load_trained
from core.store import SPLIT_FILE, ArtifactError, ModelArtifacts, Run

__all__ = ["Teacher", "load_teacher", "check_no_leak", "distill_loss"]


@dataclass
class Teacher:
    """A frozen trained model and how to turn the student's normalised batch into its input."""

    net: LoadedModel
    student_mean: tuple
    student_std: tuple

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for the student's batch: back to pixel units, its own normalisation and size."""
        def col(v):
            return torch.tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        raw = x * col(self.student_std) + col(self.student_mean)
        y = (raw - col(self.net.mean)) / col(self.net.std)
        if y.shape[-1] != self.net.input_size:
            y = F.interpolate(y, size=(self.net.input_size,) * 2, mode="bilinear", align_corners=False)
        return self.net.model(y.contiguous(memory_format=torch.channels_last)).float()


def check_no_leak(teacher_run: Run, held_out: list[str]) -> None:
    """Refuse a teacher whose run trained on (or cannot show it did not train on) any held-out film of ours."""
    table = teacher_run.split_table()
    where = dict(zip(table["path"], table["split"]))
    missing = [p for p in held_out if p not in where]
    trained = [p for p in held_out if where.get(p) == "train"]
    if missing:
        raise ArtifactError(f"{teacher_run.dir}: its {SPLIT_FILE} does not list {len(missing)} of this run's "
                            f"validation and test films (e.g. {missing[0]}): cannot show the teacher never trained "
                            "on them")
    if trained:
        raise ArtifactError(f"{teacher_run.dir}: the teacher trained on {len(trained)} of this run's validation and "
                            f"test films (e.g. {trained[0]}): its soft labels would leak them")


def load_teacher(spec_from: str, artifacts_root: Path, held_out: list[str], student_mean, student_std,
                 preprocess: str) -> Teacher:
    """The model ``run/model`` under ``artifacts_root``, checked for leaks and for seeing what the student sees."""
    parts = Path(spec_from).parts
    if len(parts) != 2 or ".." in parts:
        raise ArtifactError(f"distill_from={spec_from!r}: give run/model (a model folder under the artifacts root)")
    folder = artifacts_root / parts[0] / parts[1]
    check_no_leak(Run(folder.parent), held_out)
    net = load_trained(ModelArtifacts(folder.parent, folder.name))
    if net.framing != "none" or net.preprocess != preprocess:
        raise ArtifactError(f"{spec_from}: a teacher must see the film as the student does (framing none, "
                            f"preprocess {preprocess}); it has framing {net.framing}, preprocess {net.preprocess}")
    net.model.eval()
    for p in net.model.parameters():
        p.requires_grad_(False)
    return Teacher(net, tuple(student_mean), tuple(student_std))


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) of the tempered distributions, times T² so its gradients keep their scale."""
    t = float(temperature)
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                    reduction="batchmean") * t * t
