"""DDP on the CPU (gloo, 2 processes): `ablate fit` end to end, parity with one process, exact eval.

Run as a script, this file is the parity worker: Lightning's DDP strategy re-launches it once per
process (``_SubprocessScriptLauncher``), trains N steps and rank 0 saves the network's weights.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support import QUICK, REPO, run_ablate, write_synthetic_mnist

PRESETS = REPO / "experiments" / "presets"
FAST = REPO / "experiments" / "quickstart_fast.yaml"
# Sizes that do not divide by the world size: DistributedSampler would pad both splits.
N_TEST, VAL_SIZE = 201, 101
SMALL = (
    "--data.init_args.batch_size=32",
    f"--data.init_args.val_size={VAL_SIZE}",
    "--model.network.init_args.name=lenet5",
)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two processes on two shared cores


def _metrics(run_dir: Path) -> dict[str, float]:
    """Last value of every column of a run's metrics.csv."""
    found: dict[str, float] = {}
    with (run_dir / "metrics.csv").open() as handle:
        for row in csv.DictReader(handle):
            found.update({key: float(value) for key, value in row.items() if value})
    return found


def _confusion_total(run_dir: Path) -> int:
    with (run_dir / "confusion_matrix.csv").open() as handle:
        rows = list(csv.reader(handle))[1:]
    return sum(int(value) for row in rows for value in row[1:])


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """One `ablate fit --test_after_fit` with the ddp_cpu and W&B presets; (cwd, data dir, result)."""
    root = tmp_path_factory.mktemp("ddp")
    data = write_synthetic_mnist(root / "data", n_train=400, n_test=N_TEST)
    result = run_ablate(
        "fit",
        "--config",
        str(FAST),
        "--config",
        str(PRESETS / "trainer_ddp_cpu.yaml"),
        "--config",
        str(PRESETS / "wandb.yaml"),
        *QUICK,
        f"--data.data_dir={data}",
        *SMALL,
        "--test_after_fit=true",
        cwd=root,
        env={**ONE_THREAD, "HOME": str(root)},
        timeout=300,
    )
    return root, data, result


@pytest.mark.end_to_end
def test_ablate_fit_ddp_two_processes(ddp_run) -> None:
    root, _, result = ddp_run
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stderr + result.stdout
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    run_dir = root / "runs" / "quickstart_fast" / "version_0"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (root / "runs" / "quickstart_fast" / "version_1").exists(), "rank 1 must not log a run of its own"
    metrics = _metrics(run_dir)
    assert {"val/acc", "test/acc", "test/err", "train/loss_epoch"} <= set(metrics)
    assert "test accuracy:" in result.stdout
    # Lightning warns when an epoch-level value is logged without being reduced over the processes.
    assert "when logging on epoch level" not in result.stdout + result.stderr, "an epoch metric of one rank only"


@pytest.mark.end_to_end
def test_wandb_under_ddp_is_one_run_with_the_config_once(ddp_run) -> None:
    from tests.wandb_runs import read_wandb_run

    root, _, result = ddp_run
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((root / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "only global rank 0 starts a W&B run"
    logged = read_wandb_run(runs[0])
    assert logged["config"]["trainer"]["devices"] == 2
    assert logged["config"]["model/params"] == 60_850
    assert "label_smoothing" not in logged["config"], "module arguments live under model/, not again at the root"
    assert "test/err" in logged["summary"] and "max" in logged["summary"]["val/acc_best"]


@pytest.mark.end_to_end
def test_ddp_counts_every_eval_image_once(ddp_run) -> None:
    """Test accuracy under DDP equals one process's on the same checkpoint, 201 images on 2 ranks.

    With padding, 2 ranks would score 202 predictions: (c + x) / 202 equals c / 201 only at accuracy
    0 or 1, so equality at an accuracy strictly between proves each image counted once; the synced
    confusion matrix must hold exactly 201 entries.
    """
    root, data, result = ddp_run
    assert result.returncode == 0, result.stderr[-3000:]
    ddp_dir = root / "runs" / "quickstart_fast" / "version_0"
    ddp = _metrics(ddp_dir)
    assert _confusion_total(ddp_dir) == N_TEST
    best = next(p for p in (ddp_dir / "checkpoints").glob("epoch*.ckpt"))
    single_cwd = root / "single"
    single_cwd.mkdir()
    # A copy outside the run folder: tested there, the checkpoint's own run would take the rows.
    best = Path(shutil.copy2(best, single_cwd / best.name))
    single = run_ablate(
        "test",
        "--config",
        str(FAST),
        "--config",
        str(PRESETS / "trainer_cpu.yaml"),
        *QUICK,
        f"--data.data_dir={data}",
        *SMALL,
        f"--ckpt_path={best}",
        cwd=single_cwd,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    single_dir = single_cwd / "runs" / "quickstart_fast" / "version_0"
    reference = _metrics(single_dir)
    assert _confusion_total(single_dir) == N_TEST
    assert 0.0 < reference["test/acc"] < 1.0, "the comparison only discriminates between 0 and 1"
    assert ddp["test/acc"] == reference["test/acc"]
    assert ddp["test/err"] == pytest.approx(reference["test/err"], abs=1e-4)
    assert ddp["test/loss"] == pytest.approx(reference["test/loss"], rel=1e-5)


def test_eval_sampler_splits_without_padding(monkeypatch) -> None:
    """Unit view of the same claim: rank r takes r::W, the union is the split, nothing repeats."""
    from torch.utils.data import DistributedSampler

    import datamodules.samplers as samplers

    monkeypatch.setattr(samplers.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(samplers.dist, "get_world_size", lambda: 2)
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(samplers.dist, "get_rank", lambda rank=rank: rank)
        sampler = samplers.eval_sampler(range(N_TEST))
        assert isinstance(sampler, DistributedSampler), "Lightning keeps DistributedSampler subclasses"
        seen.append(list(sampler))
    assert [len(s) for s in seen] == [101, 100]
    assert sorted(seen[0] + seen[1]) == list(range(N_TEST))
    padded = [list(DistributedSampler(range(N_TEST), num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert len(padded[0] + padded[1]) == 202, "torch's sampler pads, which is what eval_sampler avoids"
    assert samplers.eval_sampler(range(1)) is None, "fewer images than ranks: leave Lightning's sampler"
    monkeypatch.setattr(samplers.dist, "is_initialized", lambda: False)
    assert samplers.eval_sampler(range(N_TEST)) is None


# ----- parity: 2 processes x batch B == 1 process x batch 2B ---------------------------------------
#
# torch's SyncBatchNorm runs on GPUs only (DDP refuses it on CPU modules, and its forward wants CUDA
# input), so on the CPU the BatchNorm parity goes through the same Lightning hook that
# `sync_batchnorm=True` uses (a LayerSync plugin applied before DDP wraps the model) with a
# gloo-capable stand-in that computes what SyncBatchNorm computes: statistics over the global batch.
# In float64: summing a batch in two halves rounds differently, and in float32 that flips the odd
# pre-activation sitting within 1e-7 of a ReLU's kink, a 1e-3 change in the gradient (a float64
# one-process run differs from the float32 one as much). In float64 the runs agree to 1e-10.

STEPS, GLOBAL_BATCH = 3, 16


def _parity(net: str, devices: int, out: Path, sync: str = "none") -> dict[str, dict[str, torch.Tensor]]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--net",
        net,
        "--devices",
        str(devices),
        "--out",
        str(out),
        "--sync",
        sync,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), **ONE_THREAD}
    for key in ("MASTER_PORT", "MASTER_ADDR", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"):
        env.pop(key, None)
    done = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return torch.load(out)


def _assert_same_weights(one: dict, two: dict) -> None:
    moved = [
        k
        for k in one["final"]
        if one["final"][k].is_floating_point() and not torch.equal(one["final"][k], one["initial"][k])
    ]
    assert moved, "the weights must have trained"
    assert one["final"].keys() == two["final"].keys()
    for key, value in one["final"].items():
        torch.testing.assert_close(two["final"][key], value, rtol=1e-9, atol=1e-10)


@pytest.mark.end_to_end
def test_ddp_matches_one_process_with_twice_the_batch(tmp_path: Path) -> None:
    """LeNet-5 (no BatchNorm): gradients averaged over 2 x 8 images are those of 1 x 16."""
    _assert_same_weights(_parity("lenet5", 1, tmp_path / "one.pt"), _parity("lenet5", 2, tmp_path / "two.pt"))


@pytest.mark.end_to_end
def test_ddp_with_synced_batchnorm_matches_one_process(tmp_path: Path) -> None:
    """ResNet-20: with BatchNorm synced, 2 x 8 == 1 x 16 (weights and running statistics); unsynced, not."""
    one = _parity("resnet20", 1, tmp_path / "one.pt")
    _assert_same_weights(one, _parity("resnet20", 2, tmp_path / "synced.pt", sync="gloo"))
    unsynced = _parity("resnet20", 2, tmp_path / "unsynced.pt")
    assert not torch.allclose(unsynced["final"]["bn1.running_var"], one["final"]["bn1.running_var"])


def test_sync_batchnorm_flag_converts_every_batchnorm() -> None:
    """`--trainer.sync_batchnorm true` gives the DDP strategy torch's SyncBatchNorm plugin."""
    import pytorch_lightning as pl
    from pytorch_lightning.plugins.layer_sync import TorchSyncBatchNorm

    from architectures import create_model

    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", sync_batchnorm=True, logger=False)
    assert isinstance(trainer.strategy._layer_sync, TorchSyncBatchNorm)
    net = trainer.strategy._layer_sync.apply(create_model("resnet20", num_classes=10))
    kinds = {type(module).__name__ for module in net.modules() if "BatchNorm" in type(module).__name__}
    assert kinds == {"SyncBatchNorm"}


class _GlooSyncBatchNorm(torch.nn.BatchNorm2d):
    """BatchNorm2d over the global batch of all processes, on any backend: SyncBatchNorm's maths.

    Sums and counts, then squared deviations from the global mean, are all-reduced with
    ``torch.distributed.nn.functional.all_reduce`` (differentiable: its backward all-reduces the
    gradients, as SyncBatchNorm's backward does).
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist
        from torch.distributed.nn.functional import all_reduce

        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(images)
        count = torch.tensor([images.numel() / images.size(1)], dtype=images.dtype)
        sums = all_reduce(torch.cat([images.sum(dim=(0, 2, 3)), count]))
        total = sums[-1]
        mean = sums[:-1] / total
        # Two passes: E[x^2] - E[x]^2 cancels catastrophically in float32 when the variance is small.
        var = all_reduce((images - mean[None, :, None, None]).square().sum(dim=(0, 2, 3))) / total
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * total / (total - 1), self.momentum)
        scale = self.weight / torch.sqrt(var + self.eps)
        return images * scale[None, :, None, None] + (self.bias - mean * scale)[None, :, None, None]


def _gloo_layer_sync():
    from pytorch_lightning.plugins.layer_sync import LayerSync

    class GlooSyncBatchNorm(LayerSync):
        def apply(self, model: torch.nn.Module) -> torch.nn.Module:
            for name, module in list(model.named_modules()):
                if type(module) is torch.nn.BatchNorm2d:
                    synced = _GlooSyncBatchNorm(module.num_features, module.eps, module.momentum)
                    synced.load_state_dict(module.state_dict())
                    parent, _, child = name.rpartition(".")
                    setattr(model.get_submodule(parent) if parent else model, child, synced)
            return model

        def revert(self, model: torch.nn.Module) -> torch.nn.Module:
            return model

    return GlooSyncBatchNorm()


def _parity_worker(argv: list[str]) -> None:
    """Train ``STEPS`` optimiser steps with a global batch of ``GLOBAL_BATCH`` on fixed data, in order."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--net", required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sync", choices=("none", "gloo"), default="none")
    args = parser.parse_args(argv)

    import pytorch_lightning as pl
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from architectures import create_model
    from lightning_modules.classifier import ImageClassifier

    generator = torch.Generator().manual_seed(1)
    images = torch.randn(STEPS * GLOBAL_BATCH, 1, 16, 16, generator=generator)
    labels = torch.randint(0, 10, (STEPS * GLOBAL_BATCH,), generator=generator)

    class FixedOrder(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            dataset = TensorDataset(images, labels)
            # Without shuffling, rank r's batch k holds images r, r+2, ... of the single process's
            # batch k, so both see the same images per step. (Lightning's own training sampler shuffles.)
            sampler = DistributedSampler(dataset, shuffle=False) if dist.is_initialized() else None
            return DataLoader(dataset, batch_size=GLOBAL_BATCH // args.devices, sampler=sampler)

    pl.seed_everything(0)
    model = ImageClassifier(
        create_model(args.net, num_classes=10, in_chans=1),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    )
    initial = {k: v.double() if v.is_floating_point() else v.clone() for k, v in model.network.state_dict().items()}
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        plugins=[_gloo_layer_sync()] if args.sync == "gloo" else None,
        precision="64-true",
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=FixedOrder())
    if trainer.is_global_zero:
        torch.save({"initial": initial, "final": model.network.state_dict()}, args.out)


if __name__ == "__main__":
    _parity_worker(sys.argv[1:])
