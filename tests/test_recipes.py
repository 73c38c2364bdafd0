"""Training-recipe knobs of the classifier: each changes what it should and nothing else.

Optimiser groups (no decay on norm/bias, learning-rate multipliers), schedules (warm-up, milestones
in steps/epochs/fractions, cosine, one-cycle), MixUp/CutMix soft targets end to end, dropout knobs,
EMA, bf16 autocast, channels_last, torch.compile, flip TTA, the test-time confusion matrix and the
prediction CSV, and every knob from the `ablate` command line.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from jsonargparse import ArgumentParser
from pytorch_lightning.cli import LRSchedulerCallable
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from architectures import create_model
from lightning_modules import EMA, FineTune, ImageClassifier, TestTime
from lightning_modules.errors import CheckpointError
from lightning_modules.param_groups import NORM_LAYERS
from lightning_modules.prediction_writer import CSVPredictionWriter
from lightning_modules.schedules import WarmupCosine, WarmupMultiStep
from tests.support import QUICK, REPO, run_ablate
from tests.tiny_training import FakeTrainer, TinyData, TinyNet, configured, quick_trainer, sgd

PRESETS = REPO / "experiments" / "presets"


def schedule_from_yaml(text: str):
    """An LRSchedulerCallable built by jsonargparse from YAML, exactly as LightningCLI builds it."""
    parser = ArgumentParser()
    parser.add_argument("--sched", type=LRSchedulerCallable)
    return parser.instantiate(parser.parse_object({"sched": yaml.safe_load(text)})).sched


def lrs_over(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> list[float]:
    """The learning rate each of the first ``steps`` optimiser steps uses (as Lightning steps it)."""
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


# ----- optimiser groups ----------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", [sgd(weight_decay=5e-4), functools.partial(torch.optim.AdamW, lr=1e-3)])
def test_no_weight_decay_for_norm_and_bias(optimizer) -> None:
    network = create_model("resnet20", num_classes=10, in_chans=3)
    base = optimizer([nn.Parameter(torch.zeros(1))]).defaults
    default_groups = configured(ImageClassifier(network, optimizer=optimizer))[0].param_groups
    assert len(default_groups) == 1 and default_groups[0]["weight_decay"] == base["weight_decay"]

    groups = configured(ImageClassifier(network, optimizer=optimizer, weight_decay_norm_bias=False))[0].param_groups
    decay_of = {id(p): group["weight_decay"] for group in groups for p in group["params"]}
    assert sum(len(group["params"]) for group in groups) == len(decay_of) == len(list(network.parameters()))
    for module in network.modules():
        for name, param in module.named_parameters(recurse=False):
            no_decay = isinstance(module, NORM_LAYERS) or name == "bias"
            assert decay_of[id(param)] == (0.0 if no_decay else base["weight_decay"]), (type(module), name)
    assert {group["lr"] for group in groups} == {base["lr"]}, "only the decay differs"
    assert any(isinstance(m, nn.BatchNorm2d) for m in network.modules())


def test_lr_multipliers_longest_prefix_and_head() -> None:
    network = create_model("alexnet_cifar", num_classes=10, in_chans=3)
    model = ImageClassifier(network, optimizer=sgd(0.1), lr_multipliers={"classifier": 2.0, "classifier.4": 3.0})
    FineTune(head_lr_multiplier=10.0).setup(None, model, "fit")  # the head's multiplier, as the Trainer applies it
    optimizer = configured(model)[0]
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    expected = {"features": 0.1, "classifier.1": 0.2, "classifier.4": 0.3, "classifier.6": 1.0}
    for name, param in network.named_parameters():
        prefix = next(p for p in expected if name.startswith(p + "."))
        assert lr_of[id(param)] == pytest.approx(expected[prefix]), name
    with pytest.raises(ValueError, match="'clasifier' matches no parameter.*features, classifier"):
        ImageClassifier(network, lr_multipliers={"clasifier": 2.0})


# ----- schedules -----------------------------------------------------------------------------------


def test_he_et_al_warmup_lr_at_step_k() -> None:
    """ResNet-110's 0.01 for the first 400 iterations, then 0.1, /10 at 32k and 48k (preset YAML)."""
    preset = yaml.safe_load((PRESETS / "recipes_he2016_warmup.yaml").read_text())["model"]
    factory = schedule_from_yaml(yaml.safe_dump(preset["lr_scheduler"]))
    optimizer = functools.partial(torch.optim.SGD, **preset["optimizer"]["init_args"])
    model = ImageClassifier(
        create_model("resnet110", num_classes=10, in_chans=3), optimizer=optimizer, lr_scheduler=factory
    )
    optimizer, scheduler, interval = configured(model, FakeTrainer(total_steps=64000))
    assert interval == "step", "the schedule declares it is stepped every iteration"
    rates = lrs_over(optimizer, scheduler, 402)
    assert rates[0] == rates[399] == pytest.approx(0.01)
    assert rates[400] == rates[401] == pytest.approx(0.1)
    factor = scheduler.factor
    assert (factor(31999), factor(32000), factor(47999), factor(48000)) == pytest.approx((1, 0.1, 0.1, 0.01))


def test_linear_warmup_matches_torch_linear_lr() -> None:
    params = [nn.Parameter(torch.zeros(2))]
    ours = torch.optim.SGD(params, lr=0.4)
    theirs = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.4)
    schedule = WarmupMultiStep(ours, milestones=[], unit="step", warmup=8, warmup_factor=0.25, warmup_mode="linear")
    reference = torch.optim.lr_scheduler.LinearLR(theirs, start_factor=0.25, total_iters=8)
    assert lrs_over(ours, schedule, 12) == pytest.approx(lrs_over(theirs, reference, 12))


def test_fraction_milestones_follow_the_training_length() -> None:
    """ "The same milestones as fractions": a short tier drops at the same relative points."""
    factory = schedule_from_yaml(
        "class_path: lightning_modules.schedules.WarmupMultiStep\ninit_args: {milestones: [0.5, 0.75], unit: fraction}"
    )
    for total in (1000, 64000):
        model = ImageClassifier(TinyNet(), optimizer=sgd(0.1), lr_scheduler=factory)
        scheduler = configured(model, FakeTrainer(total_steps=total))[1]
        assert scheduler.milestone_steps == [total // 2, total * 3 // 4]


def test_epoch_milestones_use_the_optimiser_steps_per_epoch() -> None:
    factory = functools.partial(
        WarmupMultiStep, milestones=[2], unit="epoch", warmup=0.5, warmup_unit="epoch", min_warmup_steps=0
    )  # the exact conversion (the floor: test_warmup_floor.py)
    model = ImageClassifier(TinyNet(), optimizer=sgd(0.1), lr_scheduler=factory)
    # 10 batches per epoch, 2 accumulated per optimiser step: 5 steps per epoch.
    scheduler = configured(model, FakeTrainer(total_steps=15, batches_per_epoch=10, accumulate=2))[1]
    assert scheduler.milestone_steps == [10] and scheduler.warmup_steps == 2


def test_cosine_with_warmup_endpoints() -> None:
    factory = schedule_from_yaml(
        "class_path: lightning_modules.schedules.WarmupCosine\n"
        "init_args: {warmup: 0.1, warmup_unit: fraction, warmup_factor: 0.01, min_factor: 0.05, min_warmup_steps: 0}"
    )
    model = ImageClassifier(TinyNet(), optimizer=sgd(1.0), lr_scheduler=factory)
    optimizer, scheduler, _ = configured(model, FakeTrainer(total_steps=100))
    rates = lrs_over(optimizer, scheduler, 100)
    assert rates[0] == pytest.approx(0.01) and rates[10] == pytest.approx(1.0) and rates[99] == pytest.approx(0.05)
    assert all(a < b for a, b in zip(rates[:10], rates[1:11], strict=True)), "warm-up rises"
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False)), "then the cosine falls"
    with pytest.raises(ValueError, match="needs total_steps"):
        WarmupCosine(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))


def test_study_schedule_is_the_fraction_form() -> None:
    """experiments/studies give WarmupMultiStep everything as fractions of the run."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = WarmupMultiStep(
        optimizer, milestones=[0.5, 0.75], warmup=0.00625, warmup_unit="fraction", min_warmup_steps=0, total_steps=64000
    )
    assert schedule.warmup_steps == 400 and schedule.milestone_steps == [32000, 48000]


def test_scheduler_interval_defaults_and_conflicts() -> None:
    multistep = schedule_from_yaml("class_path: torch.optim.lr_scheduler.MultiStepLR\ninit_args: {milestones: [3]}")
    model = ImageClassifier(TinyNet(), optimizer=sgd(0.1), lr_scheduler=multistep)
    assert configured(model)[2] == "epoch", "torch's schedules keep stepping per epoch by default"
    model = ImageClassifier(
        TinyNet(), lr_scheduler=functools.partial(WarmupMultiStep, milestones=[0.5]), scheduler_interval="epoch"
    )
    with pytest.raises(ValueError, match="WarmupMultiStep is stepped every step"):
        configured(model, FakeTrainer(total_steps=10))


def test_one_cycle_keeps_the_groups_lr_multipliers() -> None:
    factory = schedule_from_yaml("class_path: torch.optim.lr_scheduler.OneCycleLR\ninit_args: {max_lr: 0.1}")
    model = ImageClassifier(TinyNet(), optimizer=sgd(0.1), lr_scheduler=factory, scheduler_interval="step")
    FineTune(head_lr_multiplier=10.0).setup(None, model, "fit")
    optimizer, scheduler, _ = configured(model, FakeTrainer(total_steps=1000))  # long enough for its warm-up
    assert scheduler.total_steps == 1000
    assert sorted(group["max_lr"] for group in optimizer.param_groups) == pytest.approx([0.1, 1.0])


# ----- regularisation ------------------------------------------------------------------------------


class RecordTargets(pl.Callback):
    def __init__(self) -> None:
        self.targets: list[torch.Tensor] = []
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.targets.append(batch[1])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_mixup_cutmix_soft_targets_train_end_to_end(synthetic_mnist: Path) -> None:
    """The data module mixes (one implementation, datamodules/batch_augment.py); the classifier
    trains on the soft targets and scores against their argmax."""
    from datamodules import MNISTDataModule

    data = MNISTDataModule(
        data_dir=str(synthetic_mnist), batch_size=50, val_size=100, mixup_alpha=0.4, cutmix_alpha=1.0
    )
    record = RecordTargets()
    model = ImageClassifier(create_model("lenet5"), optimizer=sgd(0.05), label_smoothing=0.1)
    quick_trainer(max_steps=4, callbacks=[record], limit_val_batches=1).fit(model, datamodule=data)
    assert len(record.targets) == 4
    for targets in record.targets:
        assert targets.dtype == torch.float32 and targets.shape == (50, 10)
        torch.testing.assert_close(targets.sum(1), torch.ones(50))
    assert any((t.max(1).values < 1).any() for t in record.targets), "some targets are mixtures"
    assert all(torch.isfinite(torch.tensor(record.losses)))


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("alexnet_cifar", {"dropout": 0.3}, {"nn.Dropout": 0.3}),
        ("nin_cifar", {"dropout": 0.3}, {"nn.Dropout": 0.3}),
        ("vgg16_cifar", {"dropout": 0.3, "hidden": [512, 512]}, {"nn.Dropout": 0.3}),
        ("all_cnn_c", {"input_dropout": 0.1, "pool_dropout": 0.3}, {"nn.Dropout": {0.1, 0.3}}),
        ("googlenet_cifar", {"dropout": 0.3, "dropout_aux": 0.6}, {"nn.Dropout": {0.3, 0.6}}),
        ("squeezenet1_1", {"dropout": 0.3}, {"nn.Dropout": 0.3}),
        ("mobilenet_v2", {"dropout": 0.3}, {"nn.Dropout": 0.3}),
        ("resnet20", {"drop_rate": 0.3}, {"nn.Dropout": 0.3}),
        ("densenet40_k12", {"drop_rate": 0.3}, {"drop_rate": 0.3}),
    ],
)
def test_dropout_knobs_reach_every_dropout(name: str, overrides: dict, expected: dict) -> None:
    """The dropout table of docs/recipes.md: `overrides` of ZooModel set every dropout of the network."""
    from architectures import ZooModel

    network = ZooModel(name, num_classes=10, in_chans=3, overrides=overrides)
    if "drop_rate" in expected:
        rates = {m.drop_rate for m in network.modules() if hasattr(m, "drop_rate")}
        assert rates == {expected["drop_rate"]}
        return
    rates = {m.p for m in network.modules() if isinstance(m, nn.Dropout)}
    want = expected["nn.Dropout"]
    assert rates == (want if isinstance(want, set) else {want})


class RecordWeights(pl.Callback):
    def __init__(self) -> None:
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.snapshots.append({k: v.detach().clone() for k, v in pl_module.network.state_dict().items()})


def _accuracy(network: nn.Module, data: TinyData) -> float:
    network.eval()
    with torch.no_grad():
        return (network(data.images[:32]).argmax(1) == data.labels[:32]).float().mean().item()


def test_ema_weights_differ_from_raw_and_are_evaluated_when_asked(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = TinyData(batch_size=16)
    record = RecordWeights()
    model = ImageClassifier(TinyNet(), optimizer=sgd(0.2))
    trainer = quick_trainer(max_steps=4, callbacks=[record, EMA(decay=0.5, evaluate=True)])
    trainer.fit(model, datamodule=data)
    # The EMA follows the formula: first the weights after step 1, then 0.5 * ema + 0.5 * new.
    expected = dict(record.snapshots[0])
    for snapshot in record.snapshots[1:]:
        expected = {k: v.lerp(snapshot[k], 0.5) if v.is_floating_point() else v for k, v in expected.items()}
    ema_state = model.ema_network.module.state_dict()
    for key, value in model.network.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(ema_state[key], expected[key])
    assert not torch.equal(ema_state["fc.weight"], model.network.state_dict()["fc.weight"])
    assert model.ema_network.n_averaged.item() == 4
    assert model.evaluated_network() is model.ema_network.module

    metrics = trainer.validate(
        model, dataloaders=DataLoader(TensorDataset(data.images[:32], data.labels[:32]), batch_size=16), verbose=False
    )[0]
    ema_copy, raw_copy = TinyNet(), TinyNet()
    ema_copy.load_state_dict(ema_state)
    raw_copy.load_state_dict(model.network.state_dict())
    assert metrics["val/acc"] == pytest.approx(_accuracy(ema_copy, data))
    assert metrics["val/acc_raw"] == pytest.approx(_accuracy(raw_copy, data))
    assert any(key.startswith("ema_network.module.") for key in model.state_dict()), "checkpointed"
    assert all(not p.requires_grad for p in model.ema_network.parameters())
    with pytest.raises(ValueError, match="ema.evaluate needs an EMA"):
        EMA(evaluate=True)

    # The checkpoint alone (no callback) loads the average and evaluates what the run evaluated.
    trainer.save_checkpoint(tmp_path / "ema.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "ema.ckpt", network=TinyNet())
    assert loaded.evaluate_ema and loaded.ema_active()
    assert _accuracy(loaded.evaluated_network(), data) == pytest.approx(_accuracy(ema_copy, data))
    for key, value in ema_state.items():
        assert torch.equal(loaded.ema_network.module.state_dict()[key], value)

    # Trained on, the loaded average takes the new callback's decay; without a callback it is refused.
    with pytest.raises(ValueError, match="no EMA callback to go on averaging"):
        quick_trainer(max_steps=1).fit(loaded, datamodule=data)
    quick_trainer(max_steps=1, callbacks=[EMA(decay=0.25)]).fit(loaded, datamodule=data)
    assert loaded.ema_network.multi_avg_fn is not None and loaded.ema_network.n_averaged.item() == 5
    # Resuming the run's checkpoint without its EMA is refused before a step is taken.
    with pytest.raises(CheckpointError, match="holds an EMA of the weights and this run has no EMA callback"):
        quick_trainer(max_steps=6).fit(
            ImageClassifier(TinyNet(), optimizer=sgd(0.2)), datamodule=data, ckpt_path=tmp_path / "ema.ckpt"
        )


# ----- precision and speed -------------------------------------------------------------------------


def test_bf16_mixed_autocasts_on_cpu() -> None:
    seen: list[torch.dtype] = []
    model = ImageClassifier(TinyNet(), optimizer=sgd(0.1))
    model.network.fc.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    trainer = quick_trainer(max_steps=2, precision="bf16-mixed", limit_val_batches=0)
    trainer.fit(model, datamodule=TinyData())
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters()), "weights stay fp32"
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])


CHANNELS_LAST_MODELS = [
    ("lenet5", 1, 32),
    ("inception_mnist", 1, 28),
    ("alexnet_cifar", 3, 32),
    ("all_cnn_c", 3, 32),
    ("nin_cifar", 3, 32),
    ("resnet20", 3, 32),
    ("densenet40_k12", 3, 32),
    ("googlenet_cifar", 3, 32),
    ("shufflenet_v2_x1_0", 3, 64),
    ("mobilenet_v2", 3, 64),
    ("xception", 3, 71),
]


@pytest.mark.parametrize(("name", "in_chans", "size"), CHANNELS_LAST_MODELS, ids=[m[0] for m in CHANNELS_LAST_MODELS])
def test_channels_last_output_equals_contiguous(name: str, in_chans: int, size: int) -> None:
    """All 69 registered networks below 1000 layers pass this (checked once); the suite keeps one
    of each family style."""
    torch.manual_seed(0)
    reference = ImageClassifier(create_model(name, num_classes=10, in_chans=in_chans)).eval()
    nhwc = ImageClassifier(create_model(name, num_classes=10, in_chans=in_chans)).speed_up(channels_last=True)
    nhwc.load_state_dict(reference.state_dict())
    nhwc.eval()
    convs = [m.weight for m in nhwc.network.modules() if isinstance(m, nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs if w.shape[-1] > 1)
    images = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        expected, actual = reference(images), nhwc(images)
    # Untrained deep nets in eval mode reach large logits: compare relative to their scale.
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


class FlattensWithView(nn.Module):
    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return self.fc(out.view(out.shape[0], -1))  # view needs contiguous NCHW memory


def test_channels_last_failure_names_the_model() -> None:
    images = torch.randn(2, 3, 8, 8)
    assert ImageClassifier(FlattensWithView())(images).shape == (2, 3)
    with pytest.raises(RuntimeError, match="FlattensWithView failed with channels_last on .*--channels_last false"):
        ImageClassifier(FlattensWithView()).speed_up(channels_last=True)(images)


def test_compile_is_in_place_and_keeps_checkpoint_keys() -> None:
    plain = ImageClassifier(create_model("lenet5"))
    compiled = ImageClassifier(create_model("lenet5")).speed_up(compile=True)
    assert compiled.network._compiled_call_impl is not None, "compiled lazily, at the first forward"
    assert list(compiled.state_dict()) == list(plain.state_dict())


@pytest.mark.slow
def test_compiled_training_matches_eager() -> None:
    """torch.compile (inductor, needs a C++ compiler on CPU): ~1 min of compilation here."""
    torch.manual_seed(0)
    eager = ImageClassifier(create_model("lenet5"), optimizer=sgd(0.05))
    compiled = ImageClassifier(create_model("lenet5"), optimizer=sgd(0.05)).speed_up(compile=True)
    compiled.load_state_dict(eager.state_dict())
    for model in (eager, compiled):
        quick_trainer(max_steps=2, limit_val_batches=0, deterministic=True).fit(
            model, train_dataloaders=TinyData(in_chans=1, size=32).train_dataloader()
        )
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


# ----- evaluation ----------------------------------------------------------------------------------


class NotMirrorSymmetric(nn.Module):
    """Linear on the raw pixels (so the mirror image gets other logits); counts its calls."""

    num_classes = 4

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 16, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x.flatten(1))


def test_tta_flip_averages_mirror_logits_at_test_and_predict_only() -> None:
    torch.manual_seed(0)
    data = TinyData()
    model = ImageClassifier(NotMirrorSymmetric())
    TestTime(flip=True).setup(None, model, "test")
    images, labels = data.images[:16], data.labels[:16]
    with torch.no_grad():
        plain, mirrored = model(images), model(images.flip(-1))
    assert not torch.allclose(plain, mirrored)
    expected = ((plain + mirrored) / 2).softmax(1)
    network = model.network
    network.calls = 0
    with torch.no_grad():
        torch.testing.assert_close(model.predict_step((images, labels), 0)["probs"], expected)
        assert network.calls == 2
        model.training_step((images, labels), 0)
        assert network.calls == 3, "training sees the image once"
        model.validation_step((images, labels), 0)
        assert network.calls == 4, "validation (model selection) is not augmented"
        model.test_step((images, labels), 0)
        assert network.calls == 6
    torch.testing.assert_close(model.test_metrics["acc"].compute(), (expected.argmax(1) == labels).float().mean())


def test_a_checkpoint_remembers_flip_averaging_and_a_run_s_setting_decides(tmp_path: Path) -> None:
    """Loaded in Python (load_model, analysis), a checkpoint is evaluated as its run was; under a
    trainer, the TestTime callback's setting decides (``ablate test --test_time.flip false``)."""
    import lightning_modules.evaluation as evaluation

    path = tmp_path / "flip.ckpt"
    model = ImageClassifier(NotMirrorSymmetric())
    trainer = quick_trainer(max_steps=1, callbacks=[TestTime(flip=True)], limit_val_batches=0)
    trainer.fit(model, datamodule=TinyData())
    trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=True)[evaluation.FLIP_AT_TEST] is True
    assert ImageClassifier.load_from_checkpoint(path, network=NotMirrorSymmetric()).flip_at_test is True

    loaded = ImageClassifier.load_from_checkpoint(path, network=NotMirrorSymmetric())
    tester = quick_trainer(callbacks=[TestTime(flip=False)])
    tester.test(loaded, datamodule=TinyData(), ckpt_path=path, verbose=False)
    assert loaded.flip_at_test is False, "the callback's setting, not the checkpoint's"

    # Written before the callback: the setting was the model's hyper-parameter `tta_flip`.
    old = torch.load(path, weights_only=True)
    del old[evaluation.FLIP_AT_TEST]
    old["hyper_parameters"]["tta_flip"] = True
    torch.save(old, tmp_path / "old.ckpt")
    assert ImageClassifier.load_from_checkpoint(tmp_path / "old.ckpt", network=NotMirrorSymmetric()).flip_at_test


def test_no_confusion_matrix_without_the_callback_or_when_turned_off(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import CSVLogger

    for name, callbacks in (("none", []), ("off", [TestTime(confusion_matrix=False)]), ("on", [TestTime()])):
        logger = CSVLogger(tmp_path, name=name)
        trainer = pl.Trainer(
            accelerator="cpu", logger=logger, callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False
        )
        metrics = trainer.test(ImageClassifier(TinyNet()), datamodule=TinyData(count=16), verbose=False)[0]
        made = (Path(logger.log_dir) / "confusion_matrix.csv").is_file()
        assert made == (name == "on") and any(key.startswith("test/acc_class/") for key in metrics) == made, name


def test_confusion_matrix_and_per_class_accuracy_reach_every_logger(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    data = TinyData(count=40)
    csv_logger = CSVLogger(tmp_path, name="run")
    tensorboard = TensorBoardLogger(tmp_path, name="run", sub_dir="tensorboard", version=csv_logger.version)
    model = ImageClassifier(TinyNet())
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=[csv_logger, tensorboard],
        callbacks=[TestTime()],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    metrics = trainer.test(model, datamodule=data, verbose=False)[0]

    with torch.no_grad():
        predicted = model.eval()(data.images).argmax(1)
    folder = Path(csv_logger.log_dir)
    rows = list(csv.reader((folder / "confusion_matrix.csv").open()))
    assert rows[0] == ["true \\ predicted", *TinyData.classes]
    counts = torch.tensor([[int(v) for v in row[1:]] for row in rows[1:]])
    torch.testing.assert_close(counts, torch.bincount(data.labels * 4 + predicted, minlength=16).view(4, 4))
    per_class = list(csv.DictReader((folder / "per_class_accuracy.csv").open()))
    for index, row in enumerate(per_class):
        right = ((predicted == index) & (data.labels == index)).sum() / (data.labels == index).sum()
        assert row["class"] == TinyData.classes[index]
        assert float(row["accuracy"]) == pytest.approx(right.item())
        assert metrics[f"test/acc_class/{row['class']}"] == pytest.approx(right.item())
    assert (folder / "confusion_matrix.png").stat().st_size > 1000

    events = EventAccumulator(str(Path(tensorboard.log_dir)), size_guidance={"images": 0})
    events.Reload()
    assert "test/confusion_matrix" in events.Tags()["images"]


def test_confusion_figure_goes_to_wandb_as_an_image() -> None:
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    from lightning_modules.evaluation import log_confusion_matrix

    logged: list[dict] = []

    class RecordingWandb(WandbLogger):
        def __init__(self) -> None:  # no run: only `experiment.log` is used
            pass

        @property
        def experiment(self):
            return type("Run", (), {"log": staticmethod(logged.append)})

    log_confusion_matrix([RecordingWandb()], torch.eye(3, dtype=torch.long) * 5, ["a", "b", "c"], step=7)
    assert isinstance(logged[0]["test/confusion_matrix"], wandb.Image)
    assert logged[0]["trainer/global_step"] == 7


def test_prediction_writer_csv(tmp_path: Path) -> None:
    data = TinyData(count=40)
    model = ImageClassifier(TinyNet())
    path = tmp_path / "out" / "predictions.csv"
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[CSVPredictionWriter(str(path))]
    )
    outputs = trainer.predict(model, datamodule=data)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["index", "file", "class_index", "class", "probability", "true_class_index", "true_class"]
    assert [int(row["index"]) for row in rows] == list(range(40))
    predicted = torch.cat([out["prediction"] for out in outputs])
    confidence = torch.cat([out["probability"] for out in outputs])
    assert [int(row["class_index"]) for row in rows] == predicted.tolist()
    assert [row["class"] for row in rows] == [TinyData.classes[i] for i in predicted.tolist()]
    assert [float(row["probability"]) for row in rows] == pytest.approx(confidence.tolist(), abs=1e-6)
    assert [int(row["true_class_index"]) for row in rows] == data.labels.tolist()
    assert [row["true_class"] for row in rows] == [TinyData.classes[i] for i in data.labels.tolist()]


# ----- every knob from the command line ------------------------------------------------------------


@pytest.mark.end_to_end
def test_recipe_knobs_from_the_command_line(synthetic_mnist: Path, tmp_path: Path) -> None:
    """Presets + flags through the real `ablate`: fit with bf16, channels_last, EMA, no bias decay,
    MixUp/CutMix, cosine warm-up, clipping, flip TTA; test; then predict to CSV."""
    data = [f"--data.data_dir={synthetic_mnist}", "--data.init_args.val_size=100", "--data.init_args.batch_size=50"]
    fit = run_ablate(
        "fit", "--config", str(REPO / "experiments" / "quickstart_fast.yaml"),
        "--config", str(PRESETS / "recipes_cosine_adamw.yaml"),
        "--config", str(PRESETS / "recipes_regularisation.yaml"),
        *QUICK, *data, "--trainer.precision=bf16-mixed", "--channels_last=true", "--ema.decay=0.9",
        "--test_time.flip=true", "--model.lr_scheduler.init_args.warmup_unit=step", "--trainer.log_every_n_steps=1",
        "--test_after_fit=true",
        cwd=tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    run = sorted((tmp_path / "runs" / "quickstart_fast").glob("version_*"))[-1]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    model = saved["model"]
    assert model["optimizer"]["class_path"] == "torch.optim.AdamW" and model["weight_decay_norm_bias"] is False
    assert model["lr_scheduler"]["class_path"] == "lightning_modules.schedules.WarmupCosine"
    assert (saved["ema"]["decay"], saved["channels_last"], saved["test_time"]["flip"], model["label_smoothing"]) == (
        0.9,
        True,
        True,
        0.1,
    )
    assert saved["trainer"]["precision"] == "bf16-mixed" and saved["trainer"]["gradient_clip_val"] == 1.0
    assert saved["data"]["init_args"]["mixup_alpha"] == 0.2
    header = (run / "metrics.csv").open().readline().strip().split(",")
    for key in ("val/acc", "val/acc_ema", "test/acc_ema", "test/acc_class/7", "lr-AdamW/pg1", "lr-AdamW/pg2"):
        assert key in header, key
    assert (run / "confusion_matrix.png").is_file() and (run / "per_class_accuracy.csv").is_file()

    out = tmp_path / "predictions" / "test.csv"
    predict = run_ablate(
        "predict", "--config", str(run / "config.yaml"), "--config", str(PRESETS / "predict_csv.yaml"),
        f"--trainer.callbacks.init_args.path={out}", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
        cwd=tmp_path,
    )  # fmt: skip
    assert predict.returncode == 0, predict.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 200 and {row["class"] for row in rows} <= {str(d) for d in range(10)}
