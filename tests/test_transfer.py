"""Transfer learning: weights in torchvision's format, a new head, frozen parts, the AlexNet recipe.

No download: torchvision's AlexNet/ResNet state dicts are created locally (random weights in the
exact format of the ImageNet files) and read back with ``weights_only=True``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision
from pytorch_lightning.callbacks import Callback
from torch import nn

from architectures import create_model
from lightning_modules import ImageClassifier
from lightning_modules.transfer import FineTune, head_name, load_weights
from tests.support import REPO, SHARED_DATA, run_ablate
from tests.tiny_training import TinyData, configured, quick_trainer, sgd

CIFAR_JPEG = SHARED_DATA / "cifar10-jpeg"
RECIPE = REPO / "experiments" / "transfer" / "alexnet_cifar10.yaml"


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "alexnet.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


@pytest.fixture
def lightning_info(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture Lightning's rank-zero info lines (its logger does not propagate to the root)."""
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger=logger.name)
    yield caplog
    logger.removeHandler(caplog.handler)


def test_head_names_of_zoo_networks() -> None:
    assert head_name(create_model("alexnet_cifar", num_classes=10, in_chans=3)) == "classifier.6"
    assert head_name(create_model("resnet20", num_classes=10, in_chans=3)) == "fc"
    assert head_name(create_model("squeezenet1_1", num_classes=10, in_chans=3)) == "classifier.1"


def test_load_weights_skips_the_mismatched_head_and_says_so(tmp_path: Path, lightning_info) -> None:
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    network = create_model("resnet18", num_classes=10, in_chans=3)
    fresh_head = network.fc.weight.detach().clone()

    skipped = load_weights(network, str(path))
    assert skipped == ["fc.weight", "fc.bias"]
    assert "new head 'fc', not loaded from" in lightning_info.text and "(1000, 512) -> (10, 512)" in lightning_info.text
    loaded = network.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert torch.equal(network.fc.weight, fresh_head), "the new head keeps its fresh initialisation"

    with pytest.raises(ValueError, match="set fine_tune.skip_mismatched_head true to start a new head"):
        load_weights(create_model("resnet18", num_classes=10, in_chans=3), str(path), skip_mismatched_head=False)
    with pytest.raises(ValueError, match="does not fit ResNet .*conv1.weight"):
        load_weights(create_model("resnet18", num_classes=10, in_chans=1), str(path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_weights(network, str(tmp_path / "missing.pth"))


def test_our_own_checkpoint_loads_as_weights(tmp_path: Path) -> None:
    trained = ImageClassifier(create_model("lenet5"))
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, path)
    model = ImageClassifier(create_model("lenet5"))
    fine_tune = FineTune(weights=str(path))
    fine_tune.setup(None, model, "fit")  # no trainer: not resuming, so the weights load
    for key, value in trained.network.state_dict().items():
        assert torch.equal(model.network.state_dict()[key], value)
    # A test after fit sets up again: the trained weights stay, the starting ones are not loaded twice.
    with torch.no_grad():
        model.network.features[0].weight.add_(1.0)
    changed = model.network.features[0].weight.clone()
    fine_tune.setup(None, model, "test")
    assert torch.equal(model.network.features[0].weight, changed)


def test_weights_do_not_load_over_a_checkpoint_being_restored(tmp_path: Path) -> None:
    trained = ImageClassifier(create_model("lenet5"))
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": trained.state_dict()}, path)
    model = ImageClassifier(create_model("lenet5"))
    before = {key: value.clone() for key, value in model.network.state_dict().items()}

    class Resuming:
        ckpt_path = "last.ckpt"

    FineTune(weights=str(path)).setup(Resuming(), model, "fit")
    assert all(torch.equal(model.network.state_dict()[key], value) for key, value in before.items())


def test_frozen_backbone_is_bitwise_unchanged_after_training() -> None:
    torch.manual_seed(0)
    model = ImageClassifier(
        create_model("alexnet_cifar", num_classes=4, in_chans=3), optimizer=sgd(0.05), weight_decay_norm_bias=False
    )
    fine_tune = FineTune(freeze=["features"])
    fine_tune.setup(None, model, "fit")  # what the Trainer does before it builds the optimiser
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    optimizer = configured(model)[0]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name, param in model.network.named_parameters():
        assert param.requires_grad == (not name.startswith("features.")), name
        assert (id(param) in in_optimizer) == param.requires_grad, name
    quick_trainer(max_steps=3, callbacks=[fine_tune]).fit(model, datamodule=TinyData(size=32))
    after = model.network.state_dict()
    for key in before:
        changed = not torch.equal(before[key], after[key])
        assert changed == key.startswith("classifier."), key


class TwoStages(nn.Module):
    """conv-BN stem, conv-BN stage, linear head: one BN to freeze and one that keeps training."""

    num_classes = 4

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stage(self.stem(x)).mean((2, 3)))


class RecordModes(Callback):
    """Whether the stem's and the stage's batch norms were in training mode at each training step."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append((pl_module.network.stem[1].training, pl_module.network.stage[1].training))


def test_freeze_bn_stats_keeps_running_statistics() -> None:
    modes = RecordModes()

    def train(freeze_bn_stats: bool) -> tuple[dict, dict, ImageClassifier]:
        torch.manual_seed(0)
        model = ImageClassifier(TwoStages(), optimizer=sgd(0.05))
        before = {k: v.clone() for k, v in model.network.state_dict().items()}
        callback = FineTune(freeze=["stem"], freeze_bn_stats=freeze_bn_stats)
        quick_trainer(max_steps=3, limit_val_batches=1, val_check_interval=2, callbacks=[callback, modes]).fit(
            model, datamodule=TinyData()
        )
        return before, model.network.state_dict(), model

    before, after, model = train(freeze_bn_stats=True)
    for key in before:
        assert torch.equal(before[key], after[key]) == key.startswith("stem."), key
    # Steps 1 and 2, then a validation, then step 3: the frozen BN stays in eval mode throughout.
    assert modes.seen == [(False, True)] * 3, modes.seen
    modes.seen.clear()

    before, after, _ = train(freeze_bn_stats=False)
    assert modes.seen == [(True, True)] * 3, modes.seen
    assert not torch.equal(before["stem.1.running_mean"], after["stem.1.running_mean"])
    assert torch.equal(before["stem.1.weight"], after["stem.1.weight"]), "the parameters stay frozen"


def test_freeze_names_unknown_prefixes() -> None:
    model = ImageClassifier(create_model("alexnet_cifar", num_classes=10, in_chans=3))
    with pytest.raises(ValueError, match="freeze: 'feature' matches no parameter of AlexNet"):
        FineTune(freeze=["feature"]).setup(None, model, "fit")
    with pytest.raises(ValueError, match="head_lr_multiplier must be >= 0"):
        FineTune(head_lr_multiplier=-1)


@pytest.mark.skipif(not (CIFAR_JPEG / "train").is_dir(), reason=f"CIFAR-10 JPEG tree not found under {CIFAR_JPEG}")
@pytest.mark.end_to_end
def test_alexnet_transfer_recipe_on_real_cifar10(alexnet_file: Path, tmp_path: Path) -> None:
    """experiments/transfer/alexnet_cifar10.yaml as written (224x224, frozen features, new 10-way
    head at 10x the rate), a few batches of real CIFAR-10; ~20 s on 2 cores."""
    result = run_ablate(
        "fit", "--config", str(RECIPE), f"--fine_tune.weights={alexnet_file}",
        f"--data.init_args.data_dir={CIFAR_JPEG}", "--data.init_args.batch_size=32",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=6", "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2", "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu",
        "--test_after_fit=true", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "load_weights: new head 'classifier.6'" in output and "test accuracy:" in output
    run = sorted((tmp_path / "runs" / "alexnet_cifar10").glob("version_*"))[-1]
    trained = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    source = torch.load(alexnet_file, map_location="cpu", weights_only=True)
    for key, value in source.items():
        ours = trained[f"network.{key}"]
        if key.startswith("features."):
            assert torch.equal(ours, value), f"{key} is frozen: bitwise the loaded weights"
        elif key.startswith("classifier.6."):
            assert ours.shape[0] == 10, "a new 10-way head"
        else:
            assert ours.shape == value.shape and not torch.equal(ours, value), f"{key} trains"
    assert (run / "confusion_matrix.png").is_file()


def test_transfer_recipe_settings() -> None:
    """The recipe's knobs as the lecture states them, read the way the CLI reads them."""
    import yaml

    model = yaml.safe_load(RECIPE.read_text())["model"]
    fine_tune = yaml.safe_load(RECIPE.read_text())["fine_tune"]
    assert model["network"]["init_args"]["name"] == "alexnet"
    assert fine_tune["freeze"] == ["features"] and fine_tune["skip_mismatched_head"] is True
    assert fine_tune.pop("weights") == "AlexNet_Weights.IMAGENET1K_V1"  # not downloaded here
    data = yaml.safe_load(RECIPE.read_text())["data"]
    assert data["class_path"] == "datamodules.CIFAR10DataModule" and data["init_args"]["resize"] == 224
    network = create_model("alexnet", num_classes=10, in_chans=3)
    classifier = ImageClassifier(network)
    FineTune(**fine_tune).setup(None, classifier, "fit")
    groups = configured(classifier)[0].param_groups
    head = {id(p) for p in network.classifier[6].parameters()}
    assert {group["lr_multiplier"] for group in groups if head & {id(p) for p in group["params"]}} == {10.0}
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for n, p in network.named_parameters() if n.startswith("classifier.")
    )
    assert isinstance(network.classifier[6], nn.Linear) and network.classifier[6].out_features == 10
