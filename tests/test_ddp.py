"""Scaling out: trainer.distributed (real gloo process groups), the sharded cache build, the GPU path (skipped
without CUDA), and DDP training through torchrun (docs/scaling.md)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from core.data import cache_build
from core.data.cache import load_or_build
from core.data.layouts import scan
from core.models import accel
from trainer import distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ batch split, by arithmetic


@pytest.mark.parametrize("size,batch_len", [(2, 32), (2, 7), (3, 10), (4, 3)])
def test_rank_parts_cover_the_single_process_batch(size, batch_len):
    batch = np.arange(100, 100 + batch_len)
    parts = [distributed.rank_part(batch, distributed.World(r, size)) for r in range(size)]
    assert all(len(p) >= 1 for p in parts)  # every rank steps, even on a last batch smaller than the world
    if batch_len >= size:
        assert sorted(np.concatenate(parts).tolist()) == batch.tolist()  # each image once, none added
        # DDP averages the ranks' gradients: with the scale, that average is the whole batch's mean
        losses = np.random.default_rng(0).normal(size=batch_len)
        scaled = [distributed.loss_scale(len(p), batch_len, distributed.World(r, size)) * losses[p - 100].mean()
                  for r, p in enumerate(parts)]
        assert np.mean(scaled) == pytest.approx(losses.mean())


def test_world_of_one_changes_nothing():
    batch = np.arange(9)
    assert distributed.rank_part(batch) is batch
    assert distributed.loss_scale(9, 9) == 1.0
    assert distributed.shard(5).tolist() == [0, 1, 2, 3, 4]
    values = np.array([0.1, 0.2])
    assert distributed.gather(values, 2) is values
    assert distributed.epoch_seed(3, 2) == 3 * 100003 + 2  # the single-process trainer's augmentation seed
    assert distributed.is_main() and not distributed.world().enabled


def test_peer_failure_is_told_apart_and_said_briefly():
    gloo = RuntimeError("[/src/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:28575: Connection reset by "
                        "peer. This is typically caused by a remote worker hanging or bugs in the application.")
    assert distributed.is_peer_failure(gloo) and not distributed.is_peer_failure(ValueError("bad recipe"))
    assert distributed.peer_failure_message(gloo) == ("another training process stopped (Read error "
                                                      "[127.0.0.1]:28575: Connection reset by peer); "
                                                      "continue with --resume")


# ---------------------------------------------------------------------------------- real 2-process gloo group


def _two_ranks(rank: int, port: int, n: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    w, device = distributed.init("cpu")
    try:
        assert (w.rank, w.size, w.backend, device.type) == (rank, 2, "gloo", "cpu")
        # gather puts every rank's shard back in the original order
        full = np.linspace(0, 1, n).astype(np.float32)
        mine = distributed.shard(n)
        assert np.array_equal(distributed.gather(full[mine], n), full)

        # one DDP step on each rank's part of a batch gives the single-process gradient of the whole batch
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 2)
        x, y = torch.randn(n, 4), torch.randint(0, 2, (n,))
        ref = torch.nn.Linear(4, 2)
        ref.load_state_dict(net.state_dict())
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        ddp = distributed.wrap(net, device)
        part = torch.from_numpy(distributed.rank_part(np.arange(n)))
        loss = torch.nn.functional.cross_entropy(ddp(x[part]), y[part]) * distributed.loss_scale(len(part), n)
        loss.backward()
        torch.testing.assert_close(net.weight.grad, ref.weight.grad)
        assert distributed.unwrap(ddp) is net

        # unfreezing a layer after DDP was built: rewrap builds a new DDP that averages that layer's gradients too
        two = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        frozen = distributed.rewrap(two, device, lambda m: m[0].requires_grad_(False))
        thawed = distributed.rewrap(frozen, device, lambda m: m[0].requires_grad_(True))
        assert thawed is not frozen and distributed.unwrap(thawed) is two
        assert distributed.rewrap(thawed, device, lambda m: None) is thawed
        thawed(torch.randn(5, 4) * (rank + 1)).sum().backward()  # different data on each rank
        grad_sum = float(two[0].weight.grad.sum())
        assert np.allclose(distributed.gather(np.array([grad_sum]), 2), grad_sum)  # same on both ranks
        assert distributed.sum_across([1.0, float(rank)]) == [2.0, 1.0]

        # batch-norm statistics differ per rank until synced from rank 0
        bn = torch.nn.BatchNorm1d(3)
        bn.running_mean.fill_(float(rank + 1))
        distributed.sync_buffers(bn)
        assert torch.all(bn.running_mean == 1.0)

        # artifacts are written by rank 0 only
        class Writer:
            dir = "somewhere"

            def status(self, *a, **k):
                return "written"

        written = distributed.main_writer(Writer()).status("running")
        assert written == ("written" if rank == 0 else None)
        assert distributed.main_writer(Writer()).dir == "somewhere"
    finally:
        distributed.shutdown()


@pytest.mark.ddp
def test_two_gloo_processes_split_batches_and_gather_in_order():
    mp.spawn(_two_ranks, args=(_free_port(), 11), nprocs=2, join=True)


# ------------------------------------------------------------------------------------------ sharded cache build


def _folder(root, n, broken=()):
    for i in range(n):
        label = "PNEUMONIA" if i % 2 else "NORMAL"
        path = root / label / f"film{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if i in broken:
            path.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        else:
            Image.fromarray(np.full((40, 30), i, dtype=np.uint8)).save(path)
    return scan(root).samples


def test_sharded_build_equals_the_serial_build(tmp_path):
    samples = _folder(tmp_path / "films", 60, broken={7, 31})
    serial = load_or_build(samples, 24, root=tmp_path / "serial", workers=1)
    path = tmp_path / "sharded.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(samples), 24, 24)).flush()
    seen = []
    ok, failures = cache_build.fill(path, [s.path for s in samples], 24, workers=2, shard_rows=7,
                                    progress=lambda done, total: seen.append((done, total)))
    assert np.array_equal(np.load(path), np.asarray(serial.images))
    assert ok.tolist() == serial.ok.tolist() and ok.sum() == 58
    assert [p for p, _ in failures] == [p for p, _ in serial.failures]  # same files, same (row) order
    assert seen[-1] == (60, 60) and len(seen) == 9  # one report per shard of 7 rows


def test_parallel_cache_through_load_or_build(tmp_path):
    samples = _folder(tmp_path / "films", 40, broken={3})
    cache = load_or_build(samples, 16, root=tmp_path / "cache", workers=2)
    path_of = {os.path.basename(s.path): s.path for s in samples}
    assert cache.ok.sum() == 39 and [p for p, _ in cache.failures] == [path_of["film003.png"]]
    row = cache.index_of()[path_of["film010.png"]]
    assert int(cache.images[row].mean()) == 10  # film i is filled with the value i


def test_manifest_with_patient_ids_and_extra_label_columns(tmp_path):
    """NIH/CheXpert-style lists: a "Patient ID" column, 1.0/0.0 labels, and finding columns that are ignored."""
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name)
    (tmp_path / "list.csv").write_text(
        "Path,Patient ID,Sex,Effusion,Atelectasis,label\n"
        "a.png,p17,F,1.0,,1.0\n"
        "b.png,p17,F,0.0,1.0,0.0\n"
        "c.png,p18,M,,,PNEUMONIA\n")
    got = {os.path.basename(s.path): (s.label, s.patient_id) for s in scan(tmp_path / "list.csv").samples}
    assert got == {"a.png": (1, "p17"), "b.png": (0, "p17"), "c.png": (1, "p18")}


# ------------------------------------------------------------------------------------------------- GPU path


def test_trainer_env_says_what_training_would_use(capsys):
    from trainer.cli import main

    assert main(["env", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "device: cpu" in out and "mixed precision: off (float32)" in out and "memory layout: channels-last" in out
    assert f"torch {torch.__version__}" in out and "torchrun uses gloo here" in out
    assert "torch.compile: off" in out


def test_cpu_choice_is_float32_without_pinning():
    a = accel.choose("cpu")
    assert a.device.type == "cpu" and a.amp_dtype is None and not a.needs_scaler and not a.pin_memory
    assert not a.scaler().is_enabled()
    x = torch.ones(2, 3)
    assert a.to_device(x).device.type == "cpu"
    with a.autocast():
        assert torch.mm(x, x.T).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")
def test_cuda_path_trains_with_amp_channels_last_and_pinned_memory():
    from core.models.registry import create_model

    a = accel.choose("cuda")
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert a.amp_dtype == expected and a.needs_scaler == (expected == torch.float16) and a.pin_memory
    model, _ = create_model("small_cnn", pretrained=False, input_size=64)
    model = a.prepare(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = a.scaler()
    x = a.to_device(torch.rand(8, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    y = a.to_device(torch.randint(0, 2, (8,)))
    with a.autocast():
        logits = model(x)
    assert logits.dtype == expected
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.isfinite(loss)


# ------------------------------------------------------------------- DDP training through torchrun, end to end

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "trainer", "--"]
# Observes (never changes) every os.replace, i.e. every atomic artifact write, with the writing process's rank.
WRITE_LOG_SITECUSTOMIZE = """
import os
_replace = os.replace
def _logged(src, dst, *args, **kwargs):
    _replace(src, dst, *args, **kwargs)
    with open(os.environ["CXR_TEST_WRITE_LOG"], "a") as log:
        log.write(os.environ.get("RANK", "-") + "\\t" + os.fspath(dst) + "\\n")
os.replace = _logged
"""


def _train_args(data: Path, root: Path, epochs: int) -> list[str]:
    return ["train", "--data", str(data), "--models", "small_cnn", "--subset", "20", "--epochs", str(epochs),
            "--input-size", "64", "--batch-size", "16", "--run", "ddp", "--artifacts", str(root / "artifacts"),
            "--cache-dir", str(root / "cache"), "--threads", "1", "--seed", "0"]


def _env(root: Path) -> dict:
    hook = root / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(WRITE_LOG_SITECUSTOMIZE)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)]), "OMP_NUM_THREADS": "1",
            "TQDM_DISABLE": "1", "CXR_OFFLINE": "1", "CXR_TEST_WRITE_LOG": str(root / "writes.log")}


@pytest.fixture(scope="module")
def ddp_run(kermany224, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    out = subprocess.run(TORCHRUN + _train_args(kermany224, root, epochs=2), cwd=REPO, env=_env(root),
                         capture_output=True, text=True, timeout=600, check=False)
    return root, out


@pytest.mark.train
@pytest.mark.ddp
def test_torchrun_two_processes_write_each_artifact_once(ddp_run):
    root, out = ddp_run
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "cpu x 2 processes (gloo)" in out.stderr  # progress is logged (trainer/logs.py), by rank 0 only
    assert out.stderr.count("== small_cnn") == 1  # rank 1 logs warnings and errors only
    model = root / "artifacts" / "ddp" / "small_cnn"
    assert json.loads((model / "status.json").read_text())["state"] == "finished"
    assert [int(line.split(",")[0]) for line in (model / "history.csv").read_text().splitlines()[1:]] == [1, 2]
    writes = [line.split("\t") for line in (root / "writes.log").read_text().splitlines()]
    artifact_writes = [(rank, dst) for rank, dst in writes if str(root / "artifacts") in dst]
    assert {rank for rank, _ in artifact_writes} == {"0"}  # only rank 0 wrote into artifacts/
    written = {Path(dst).name for _, dst in artifact_writes}
    assert {"run.json", "split.csv", "config.json", "best.safetensors", "last.pt", "metrics_test.json"} <= written
    assert sum(Path(dst).name == "config.json" for _, dst in artifact_writes) == 1
    assert not list(model.rglob("*.tmp"))


@pytest.mark.train
@pytest.mark.ddp
def test_ddp_metrics_equal_a_single_process_evaluation_of_the_checkpoint(ddp_run, kermany224):
    from trainer.cli import main

    root, out = ddp_run
    assert out.returncode == 0, out.stderr[-4000:]
    run_dir = root / "artifacts" / "ddp"
    split = pd.read_csv(run_dir / "split.csv")
    test = split[split["split"] == "test"]
    manifest = root / "test_again.csv"
    pd.DataFrame({"path": [str(kermany224 / p) for p in test["path"]], "label": test["label"]}).to_csv(
        manifest, index=False)
    assert main(["evaluate", "--run", str(run_dir), "--data", str(manifest), "--split-name", "again",
                 "--cache-dir", str(root / "cache")]) == 0
    model = run_dir / "small_cnn"
    ddp_m = json.loads((model / "metrics_test.json").read_text())
    one_m = json.loads((model / "metrics_again.json").read_text())
    assert one_m["n"] == ddp_m["n"] == len(test)
    assert one_m["auc"] == pytest.approx(ddp_m["auc"], abs=1e-9)
    for rule, at in ddp_m["at"].items():
        assert one_m["at"][rule]["threshold"] == at["threshold"]  # chosen on validation, by the DDP run
        assert one_m["at"][rule]["sensitivity"] == at["sensitivity"]
        assert one_m["at"][rule]["specificity"] == at["specificity"]
    ddp_p = pd.read_csv(model / "predictions_test.csv").assign(name=lambda d: d["path"].map(lambda p: Path(p).name))
    one_p = pd.read_csv(model / "predictions_again.csv").assign(name=lambda d: d["path"].map(lambda p: Path(p).name))
    both = ddp_p.merge(one_p, on="name", suffixes=("_ddp", "_one"))
    assert len(both) == len(test)
    np.testing.assert_allclose(both["probability_ddp"], both["probability_one"], atol=1e-6)


def _rank_pid(launcher_pid: int, rank: str) -> int | None:
    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == rank:
                return child.pid
        except psutil.Error:
            continue
    return None


@pytest.mark.train
@pytest.mark.ddp
@pytest.mark.slow  # three torchrun launches: about a minute on an idle 2-core machine, several under load
def test_killed_rank_stops_the_run_and_resume_continues(kermany224, tmp_path):
    args, env = _train_args(kermany224, tmp_path, epochs=5), _env(tmp_path)
    model = tmp_path / "artifacts" / "ddp" / "small_cnn"
    proc = subprocess.Popen(TORCHRUN + args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    killed, deadline = None, time.monotonic() + 400
    while proc.poll() is None and time.monotonic() < deadline:
        history = model / "history.csv"
        if history.exists() and len(history.read_text().splitlines()) >= 2:  # epoch 1 is saved
            killed = _rank_pid(proc.pid, "1")
            if killed:
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.05)
    log = proc.communicate(timeout=300)[0]
    assert killed, "the run ended before a rank could be killed:\n" + log[-3000:]
    assert proc.returncode != 0
    status = json.loads((model / "status.json").read_text())
    assert status["state"] == "stopped" and "--resume" in status["message"], status
    done = len((model / "history.csv").read_text().splitlines()) - 1
    assert 1 <= done < 5

    resumed = subprocess.run(TORCHRUN + [*args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    assert f"resuming small_cnn after epoch {done}" in resumed.stderr
    epochs = [int(line.split(",")[0]) for line in (model / "history.csv").read_text().splitlines()[1:]]
    assert epochs == [1, 2, 3, 4, 5]
    assert json.loads((model / "status.json").read_text())["state"] == "finished"
