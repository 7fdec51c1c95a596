"""Every file and folder name of an artifacts root and its run folders (docs/artifacts.md), and nothing else.

No other module spells these names (``tests/test_store.py`` checks it): code outside ``core.store`` reaches a file
through the store's readers and writers, or through the path functions here.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BEST_CHECKPOINT_FILE", "CALIBRATION_FILE", "CAM_REFERENCE_FILE", "CARD_HTML_FILE", "CARD_MD_FILE",
    "CHECKPOINTS_DIR", "CONFIG_FILE", "DEFAULT_RUN_FILE", "FAITHFULNESS_FILE", "HISTORY_FILE", "LAST_CHECKPOINT_FILE",
    "ONNX_FILE", "POPULATION_FILE", "RECOMMENDED_FILE", "RUN_FILE", "SHIFT_FILE", "SITES_DIR", "SITE_PREDICTIONS_FILE",
    "SITE_PROFILE_FILE", "SKIPPED_FILE", "SPLIT_FILE", "STATUS_FILE", "best_checkpoint", "checkpoints_dir",
    "epoch_checkpoint", "epoch_checkpoints", "evaluated_file", "focus_summary_file", "focus_table_file",
    "last_checkpoint", "metrics_file", "model_folders", "onnx_beside", "predictions_file", "run_folders",
    "site_dir", "site_folders", "splits_with_focus", "splits_with_predictions",
]

# --- the artifacts root ---------------------------------------------------------------------------------------
DEFAULT_RUN_FILE = "DEFAULT_RUN"  # the id of the run shown first (one line)
RECOMMENDED_FILE = "RECOMMENDED"  # ``run/model``: the model recommended for new films

# --- a run folder ---------------------------------------------------------------------------------------------
RUN_FILE = "run.json"
SPLIT_FILE = "split.csv"
SKIPPED_FILE = "skipped.csv"
FAITHFULNESS_FILE = "faithfulness.json"
SHIFT_FILE = "shift.json"

# --- a model folder -------------------------------------------------------------------------------------------
CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
HISTORY_FILE = "history.csv"
CALIBRATION_FILE = "calibration.json"
CAM_REFERENCE_FILE = "cam_reference.json"
POPULATION_FILE = "population.json"
CARD_MD_FILE, CARD_HTML_FILE = "MODEL_CARD.md", "model_card.html"
CHECKPOINTS_DIR = "checkpoints"
BEST_CHECKPOINT_FILE = "best.safetensors"
LAST_CHECKPOINT_FILE = "last.pt"
ONNX_FILE = "model.onnx"  # beside the best checkpoint (``trainer export``)
SITES_DIR = "sites"
SITE_PROFILE_FILE = "profile.json"  # in sites/<site>/
SITE_PREDICTIONS_FILE = "predictions.csv"  # in sites/<site>/

_PREDICTIONS, _METRICS, _FOCUS, _EVALUATED, _EPOCH = "predictions_", "metrics_", "lung_focus_", "evaluated_", "epoch_"


def predictions_file(split: str) -> str:
    return f"{_PREDICTIONS}{split}.csv"


def metrics_file(split: str) -> str:
    return f"{_METRICS}{split}.json"


def focus_table_file(split: str) -> str:
    """One row per film and CAM method (``trainer focus``)."""
    return f"{_FOCUS}{split}.csv"


def focus_summary_file(split: str) -> str:
    """Per CAM method: median, quartiles, share flagged (``trainer focus``)."""
    return f"{_FOCUS}{split}.json"


def evaluated_file(split: str) -> str:
    """In the run folder: what ``trainer evaluate --split-name`` scored."""
    return f"{_EVALUATED}{split}.json"


def _stems(folder: Path, prefix: str, suffix: str) -> list[str]:
    return [p.name[len(prefix):-len(suffix)] for p in Path(folder).glob(f"{prefix}*{suffix}")]


def splits_with_predictions(model_dir: str | Path) -> list[str]:
    """Split names of a model's ``predictions_<split>.csv`` files, unchecked and unsorted."""
    return _stems(model_dir, _PREDICTIONS, ".csv")


def splits_with_focus(model_dir: str | Path, summary: bool = False) -> list[str]:
    """Split names of a model's lung-focus tables (or, with ``summary``, summaries), unchecked and unsorted."""
    return _stems(model_dir, _FOCUS, ".json" if summary else ".csv")


def run_folders(root: str | Path) -> list[Path]:
    """Folders of ``root`` holding a run.json (names unchecked)."""
    return [p.parent for p in Path(root).glob(f"*/{RUN_FILE}")]


def model_folders(run_dir: str | Path) -> set[str]:
    """Names of a run's folders holding a config.json or a status.json (a model that failed before its config)."""
    return {p.parent.name for name in (CONFIG_FILE, STATUS_FILE) for p in Path(run_dir).glob(f"*/{name}")}


def site_dir(model_dir: str | Path, site: str) -> Path:
    return Path(model_dir) / SITES_DIR / site


def site_folders(model_dir: str | Path) -> list[str]:
    """Names of a model's site folders that hold a profile (names unchecked)."""
    return [p.parent.name for p in (Path(model_dir) / SITES_DIR).glob(f"*/{SITE_PROFILE_FILE}")]


# --- checkpoints ----------------------------------------------------------------------------------------------

def checkpoints_dir(model_dir: str | Path) -> Path:
    return Path(model_dir) / CHECKPOINTS_DIR


def best_checkpoint(model_dir: str | Path) -> Path:
    return checkpoints_dir(model_dir) / BEST_CHECKPOINT_FILE


def last_checkpoint(model_dir: str | Path) -> Path:
    return checkpoints_dir(model_dir) / LAST_CHECKPOINT_FILE


def epoch_checkpoint(model_dir: str | Path, epoch: int) -> Path:
    return checkpoints_dir(model_dir) / f"{_EPOCH}{epoch:03d}.pt"


def epoch_checkpoints(model_dir: str | Path) -> list[Path]:
    """A model's ``epoch_NNN.pt`` files, oldest first."""
    return sorted(checkpoints_dir(model_dir).glob(f"{_EPOCH}*.pt"))


def onnx_beside(checkpoint: str | Path) -> Path:
    """Where ``trainer export`` puts a checkpoint's ONNX graph: beside it."""
    return Path(checkpoint).parent / ONNX_FILE
