"""The generic classifier: losses with auxiliary heads, soft targets, injected optimiser/schedule."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from architectures import AuxOutputs, create_model
from lightning_modules import ImageClassifier, NonFiniteLossError


class TwoHeadNet(nn.Module):
    """A tiny net with two auxiliary heads, returning AuxOutputs like GoogLeNet does."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.main = nn.Linear(8, num_classes)
        self.aux_heads = nn.ModuleList(nn.Linear(8, num_classes) for _ in range(2))

    def forward(self, x: torch.Tensor) -> AuxOutputs:
        aux = tuple(head(x) for head in self.aux_heads) if self.training else ()
        return AuxOutputs(self.main(x), aux)


def test_loss_is_main_plus_weighted_aux() -> None:
    torch.manual_seed(0)
    model = ImageClassifier(TwoHeadNet(), aux_weights=[0.3, 1.5])
    x, y = torch.randn(6, 8), torch.randint(0, 4, (6,))
    out = model.network(x)
    losses = model.compute_loss(out, y)
    main = F.cross_entropy(out.logits, y)
    aux0, aux1 = (F.cross_entropy(a, y) for a in out.aux)
    torch.testing.assert_close(losses["loss_main"], main)
    torch.testing.assert_close(losses["loss_aux0"], aux0)
    torch.testing.assert_close(losses["loss"], main + 0.3 * aux0 + 1.5 * aux1)


def test_single_aux_weight_applies_to_every_head_and_eval_has_no_aux() -> None:
    model = ImageClassifier(TwoHeadNet(), aux_weights=0.5)
    x, y = torch.randn(3, 8), torch.randint(0, 4, (3,))
    out = model.network(x)
    losses = model.compute_loss(out, y)
    expected = losses["loss_main"] + 0.5 * (losses["loss_aux0"] + losses["loss_aux1"])
    torch.testing.assert_close(losses["loss"], expected)
    model.eval()
    assert set(model.compute_loss(model.network(x), y)) == {"loss", "loss_main"}


def test_aux_weight_count_must_match_heads() -> None:
    model = ImageClassifier(TwoHeadNet(), aux_weights=[0.3])
    with pytest.raises(ValueError, match="1 entries but the network has 2 aux heads"):
        model.compute_loss(model.network(torch.randn(2, 8)), torch.tensor([0, 1]))


def test_soft_targets_and_label_smoothing() -> None:
    model = ImageClassifier(TwoHeadNet().eval(), label_smoothing=0.1)
    x = torch.randn(5, 8)
    hard = torch.randint(0, 4, (5,))
    soft = F.one_hot(hard, 4).float()
    logits = model(x)
    expected = F.cross_entropy(logits, hard, label_smoothing=0.1)
    torch.testing.assert_close(model.compute_loss(logits, hard)["loss"], expected)
    torch.testing.assert_close(model.compute_loss(logits, soft)["loss"], expected)


def test_bad_optimizer_settings_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="Invalid learning rate: -0.1"):
        ImageClassifier(TwoHeadNet(), optimizer=functools.partial(torch.optim.SGD, lr=-0.1))
    with pytest.raises(ValueError, match="label_smoothing"):
        ImageClassifier(TwoHeadNet(), label_smoothing=1.5)


def test_network_must_expose_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        ImageClassifier(nn.Linear(3, 3))


def test_non_finite_loss_names_the_step() -> None:
    model = ImageClassifier(TwoHeadNet().eval())
    with pytest.raises(NonFiniteLossError, match="non-finite training loss .* at global step 0"):
        model.training_step((torch.full((2, 8), float("nan")), torch.tensor([0, 1])), 0)


def test_one_cycle_gets_the_trainers_step_count() -> None:
    from jsonargparse import ArgumentParser
    from pytorch_lightning.cli import LRSchedulerCallable

    parser = ArgumentParser()
    parser.add_argument("--sched", type=LRSchedulerCallable)
    cfg = parser.parse_args(
        ["--sched", '{"class_path": "torch.optim.lr_scheduler.OneCycleLR", "init_args": {"max_lr": 0.1}}']
    )
    sched_factory = parser.instantiate(cfg).sched
    model = ImageClassifier(create_model("lenet5"), lr_scheduler=sched_factory, scheduler_interval="step")

    class FakeTrainer:
        estimated_stepping_batches = 123
        max_epochs = 3

    model._trainer = FakeTrainer()  # configure_optimizers only reads the step estimate
    configured = model.configure_optimizers()
    assert configured["lr_scheduler"]["scheduler"].total_steps == 123
    assert configured["lr_scheduler"]["interval"] == "step"


# 4 batches an epoch: the queue flushed every step; mid-epoch and at the end; at the end only.
@pytest.mark.parametrize("queued", [1, 3, 16])
def test_epoch_training_metrics_cover_every_batch_of_the_epoch(tmp_path, monkeypatch, queued) -> None:
    """train/acc and train/loss_epoch, logged once per epoch, are those of all the epoch's batches."""
    import csv

    monkeypatch.setattr("lightning_modules.classifier.TRAIN_METRIC_BATCHES", queued)

    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    images, labels = torch.randn(60, 8), torch.randint(0, 4, (60,))
    network = TwoHeadNet()
    network.aux_heads = nn.ModuleList()  # one head: the loss is the main cross-entropy
    # A learning rate too small to move the weights: the epoch's metrics are the network's on the data.
    model = ImageClassifier(network, optimizer=functools.partial(torch.optim.SGD, lr=1e-12))
    expected = []

    class BiasEachEpoch(pl.Callback):
        """A different network each epoch (a bias towards class `epoch`), so a metric that was not
        reset between epochs would show."""

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            with torch.no_grad():
                network.main.bias[trainer.current_epoch] += 0.5
                logits = network(images).logits
            expected.append(
                ((logits.argmax(1) == labels).float().mean().item(), F.cross_entropy(logits, labels).item())
            )

    trainer = pl.Trainer(
        max_epochs=2,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[BiasEachEpoch()],
    )
    trainer.fit(model, DataLoader(TensorDataset(images, labels), batch_size=16))  # 16+16+16+12
    with open(next(tmp_path.rglob("metrics.csv"))) as handle:
        epochs = [row for row in csv.DictReader(handle) if row["train/acc"]]
    assert [row["epoch"] for row in epochs] == ["0", "1"]
    assert expected[0] != expected[1]
    for row, (accuracy, loss) in zip(epochs, expected, strict=True):
        assert float(row["train/acc"]) == pytest.approx(accuracy, abs=1e-6)
        assert float(row["train/loss_epoch"]) == pytest.approx(loss, abs=1e-5)


def test_step_loss_goes_to_the_loggers_on_their_steps_and_to_the_bar_on_every_step(tmp_path) -> None:
    """train/loss is logged on the steps the loggers write, with that step's loss; the bar shows the last one."""
    import csv

    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_modules.progress import ThrottledRichProgressBar

    torch.manual_seed(0)
    network = TwoHeadNet()
    network.aux_heads = nn.ModuleList()
    model = ImageClassifier(network, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    step_losses = []
    bar = ThrottledRichProgressBar()

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            step_losses.append(outputs["loss"].item())
            assert bar.get_metrics(trainer, pl_module)["train/loss"] == pytest.approx(step_losses[-1])

    trainer = pl.Trainer(
        max_epochs=1,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=3,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[Record()],
    )
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(56, 8), torch.randint(0, 4, (56,))), batch_size=8))
    with open(next(tmp_path.rglob("metrics.csv"))) as handle:
        logged = {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(handle) if row["train/loss"]}
    assert len(step_losses) == 7 and len(set(step_losses)) == 7  # the weights move: every step's loss differs
    # Steps 3 and 6 (1-based), by log_every_n_steps: the rows Lightning wrote when every step was logged.
    assert logged == pytest.approx({2: step_losses[2], 5: step_losses[5]})


# A run that max_steps ends counts steps across epochs (the count is the bar's own: "step 3/5").
@pytest.mark.parametrize(("max_epochs", "max_steps", "expected"), [(3, -1, "Epoch 1/2"), (-1, 5, "step")])
def test_the_bar_names_the_last_epoch_only_when_epochs_bound_the_run(max_epochs, max_steps, expected) -> None:
    import pytorch_lightning as pl

    from lightning_modules.progress import ThrottledRichProgressBar

    bar = ThrottledRichProgressBar()
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        max_steps=max_steps,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    bar.setup(trainer, None, "fit")
    assert bar._get_train_description(1).strip() == expected
