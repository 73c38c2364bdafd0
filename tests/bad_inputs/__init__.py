"""The bad-input corpus: every case is one line of ``CASES``, run through the real ``ablate``
command by ``tests/test_bad_inputs.py``. The first cases live here; each family of cases added
since lives in its own file (``FAMILIES``) with the inputs it needs.

Each case must end with a non-zero exit, a last stderr line ``ablate: error: <Type>: <message>``
containing ``expect``, and nothing recorded as a finished result (no ``*.ckpt`` and no
``result.json`` in the run's folder). ``args`` is one shell-quoted string; ``{name}`` fields are
the inputs ``write_inputs`` creates (``{config}`` is a LeNet-5 on synthetic MNIST, one batch,
``--trainer.fast_dev_run``). Add a case: one ``Case`` line, plus an input in ``write_inputs`` if
it needs a new file.

Rule for batch size under DDP (docs/reliability.md, "Clear failures"): ``batch_size`` is per process, so any
batch size works with any number of processes (the global batch is ``processes x batch_size``)
and nothing has to divide anything; what must hold is ``batch_size >= 1``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from datamodules.synthetic import write_cifar10_pickles, write_cifar100_pickles, write_idx, write_image_tree
from tests.bad_inputs.case import CIFAR, FIT, MARKER, TEST, Case
from tests.support import write_synthetic_mnist

_CORE_CASES: list[Case] = [
    # ----- configuration ---------------------------------------------------------------------------------
    Case(
        "unknown-architecture",
        f"{FIT} --model.network.init_args.name=resnet2000",
        "KeyError: unknown architecture 'resnet2000'. Did you mean: resnet20",
    ),
    Case(
        "unknown-network-class",
        FIT + " --model.network=architectures.NoSuchNet",
        "ConfigError: Parser key \"model.network\": Problem with given class_path 'architectures.NoSuchNet'",
    ),
    Case(
        "unknown-data-class",
        f"{FIT} --data=datamodules.NoSuchData",
        "ConfigError: Parser key \"data\": Problem with given class_path 'datamodules.NoSuchData'",
    ),
    Case(
        "wrong-type-int",
        f"{FIT} --trainer.max_epochs=ten",
        'ConfigError: Parser key "trainer.max_epochs": expected a value of type int (given: ten)',
    ),
    Case(
        "wrong-type-in-data",
        f"{FIT} --data.init_args.batch_size=abc",
        'Parser key "batch_size": expected a value of type int. Got value: abc',
    ),
    Case("unknown-key", f"{FIT} --model.bogus=1", "ConfigError: unrecognized arguments: --model.bogus=1"),
    Case("missing-config-file", "fit --config {root}/nope.yaml", "File does not exist"),
    Case(
        "missing-network",
        "fit --data=datamodules.MNISTDataModule --data.data_dir={mnist}",
        "ConfigError: the following arguments are required: fit.model.network",
    ),
    Case(
        "missing-data-module",
        "fit --model.network=architectures.ZooModel --model.network.init_args.name=lenet5",
        "ConfigError: no data module: give --data",
    ),
    Case(
        "negative-learning-rate",
        f"{FIT} --model.optimizer.init_args.lr=-0.1",
        "ValueError: Invalid learning rate: -0.1",
    ),
    Case(
        "zero-learning-rate",
        f"{FIT} --model.optimizer.init_args.lr=0",
        "ConfigError: the learning rate must be positive, got model.optimizer.init_args.lr=0; with 0 the weights",
    ),
    Case(
        "num-classes-contradicts-data",
        f"{FIT} --model.network.init_args.num_classes=7",
        "ConfigError: model.network.init_args.num_classes=7 contradicts the data: MNISTDataModule has num_classes=10",
    ),
    Case(
        "in-chans-contradicts-data",
        f"{FIT} --model.network.init_args.in_chans=3",
        "model.network.init_args.in_chans=3 contradicts the data: MNISTDataModule has in_chans=1",
    ),
    Case(
        "knob-unknown-value",
        FIT + " --model.network=architectures.resnet.ResNet --model.network.init_args.shortcut=bogus",
        'Parser key "shortcut"',
    ),
    Case(
        "knob-unknown-value-in-overrides",
        FIT + ' --model.network.init_args.name=resnet20 --model.network.init_args.overrides=\'{"shortcut": "bogus"}\'',
        "ValueError: unknown shortcut 'bogus'; choose one of identity, none, scale",
    ),
    Case(
        "unknown-knob",
        f"{FIT} --model.network.init_args.overrides='{{\"bogus_knob\": 3}}'",
        "TypeError: LeNet5.__init__() got an unexpected keyword argument 'bogus_knob'",
    ),
    Case("zero-batch-size", f"{FIT} --data.init_args.batch_size=0", "batch_size must be positive, got 0"),
    Case(
        "validation-larger-than-data",
        f"{FIT} --data.init_args.val_size=100000",
        "val_size must be in [0, 600), got 100000",
    ),
    Case("negative-epochs", f"{FIT} --trainer.max_epochs=-5", "`max_epochs` must be a non-negative integer or -1"),
    Case(
        "label-smoothing-out-of-range",
        f"{FIT} --model.label_smoothing=1.5",
        "label_smoothing must be in [0, 1), got 1.5",
    ),
    Case("zero-devices", f"{FIT} --trainer.devices=0", "devices"),
    # ----- data ------------------------------------------------------------------------------------------
    Case(
        "missing-data-directory", f"{FIT} --data.data_dir={{root}}/absent", "DataNotFoundError: MNIST not found under"
    ),
    Case(
        "truncated-idx-file",
        f"{FIT} --data.data_dir={{mnist_truncated}}",
        "train-images-idx3-ubyte is truncated or corrupt: its header promises",
    ),
    Case("label-out-of-range-mnist", f"{FIT} --data.data_dir={{mnist_bad_label}}", "MNIST labels outside 0..9"),
    Case(
        "label-out-of-range-cifar",
        f"{FIT} {CIFAR}={{cifar_bad_label}}",
        "DataFormatError: CIFAR10DataModule train split: label 11 is outside 0..9",
    ),
    Case("missing-cifar-batch", f"{FIT} {CIFAR}={{cifar_missing_batch}}", "missing data_batch_3"),
    Case("empty-class-folder", f"{FIT} {CIFAR}={{tree_empty_class}}", "train/cat holds no images"),
    Case("corrupt-jpeg", f"{FIT} {CIFAR}={{tree_corrupt_jpeg}}", "CorruptImageError: cannot decode image"),
    Case(
        "channel-mismatch",
        f"{FIT} {CIFAR}={{tree_grayscale}}",
        "has 1 channel(s) (grayscale) but CIFAR-10 feeds 3-channel models",
    ),
    Case("image-size-mismatch", f"{FIT} {CIFAR}={{tree_wrong_size}}", "is 40x40 pixels but every CIFAR-10 image"),
    # ----- runtime: checkpoints, training ----------------------------------------------------------------
    Case("checkpoint-missing", f"{TEST} --ckpt_path={{root}}/nope.ckpt", "CheckpointError: checkpoint"),
    Case("checkpoint-truncated", f"{TEST} --ckpt_path={{ckpt_truncated}}", "is truncated or corrupt"),
    Case("checkpoint-malicious", f"{TEST} --ckpt_path={{ckpt_malicious}}", "CheckpointError: refusing to load"),
    Case(
        "checkpoint-of-another-network",
        f"{TEST} --model.network.init_args.name=inception_mnist --ckpt_path={{ckpt_lenet}}",
        "holds the weights of another network",
    ),
    Case(
        "checkpoint-10-classes-on-cifar100",
        f"{TEST} --data=datamodules.CIFAR100DataModule --data.download=false"
        " --data.val_size=10 --data.data_dir={cifar100} --ckpt_path={ckpt_lenet_rgb}",
        "was trained for 10 classes but this run's data has 100",
    ),
    Case("checkpoint-last-but-none", f"{TEST} --ckpt_path=last", "no last.ckpt in this configuration's run folders"),
    Case("weights-file-truncated", f"{FIT} --fine_tune.weights={{ckpt_truncated}}", "is truncated or corrupt"),
    Case(
        "weights-file-malicious",
        f"{FIT} --fine_tune.weights={{ckpt_malicious}}",
        "holds objects other than tensors; refused",
    ),
    Case(
        "non-finite-loss",
        f"{FIT} --model.network.init_args.name=inception_mnist --model.optimizer.init_args.lr=1e12"
        " --trainer.fast_dev_run=4",
        "NonFiniteLossError: non-finite training loss (nan) at global step 1",
    ),
]

# Families of cases beyond the first corpus, one file each (``Case`` lines plus their inputs).
from tests.bad_inputs import data_files, messages, runs, saves  # noqa: E402

FAMILIES = (data_files, runs, saves, messages)
CASES: list[Case] = _CORE_CASES + [case for family in FAMILIES for case in family.CASES]


def write_inputs(root: Path) -> dict[str, str]:
    """Create every input the cases name; returns the ``{placeholder: path}`` table."""
    table = _write_core_inputs(root)
    for family in FAMILIES:
        folder = root / family.__name__.rsplit(".", 1)[-1]
        table.update({name: str(path) for name, path in family.write_inputs(folder).items()})
    return table


def _write_core_inputs(root: Path) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"root": root}

    paths["mnist"] = write_synthetic_mnist(root / "mnist", n_train=600, n_test=50)
    config = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "fast_dev_run": True,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {
            "network": {"class_path": "architectures.ZooModel", "init_args": {"name": "lenet5"}},
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}},
        },
        "data": {
            "class_path": "datamodules.MNISTDataModule",
            "init_args": {"data_dir": str(paths["mnist"]), "batch_size": 16, "val_size": 100, "download": False},
        },
    }
    paths["config"] = root / "tiny.yaml"
    paths["config"].write_text(yaml.safe_dump(config))

    truncated = write_synthetic_mnist(root / "mnist_truncated", n_train=300, n_test=50)
    images = truncated / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    paths["mnist_truncated"] = truncated
    bad_label = write_synthetic_mnist(root / "mnist_bad_label", n_train=300, n_test=50)
    labels = np.zeros(300, np.uint8)
    labels[7] = 12
    write_idx(bad_label / "MNIST" / "raw" / "train-labels-idx1-ubyte", labels)
    paths["mnist_bad_label"] = bad_label

    paths["cifar_bad_label"] = write_cifar10_pickles(
        root / "cifar_bad_label", per_batch=20, num_test=30, labels_override={"data_batch_2": [3] * 19 + [11]}
    )
    missing = write_cifar10_pickles(root / "cifar_missing_batch", per_batch=20, num_test=30)
    (missing / "cifar-10-batches-py" / "data_batch_3").unlink()
    paths["cifar_missing_batch"] = missing
    paths["cifar100"] = write_cifar100_pickles(root / "cifar100", num_train=200, num_test=50)

    tree = {"train": 2, "test": 1}
    write_image_tree(root / "tree_empty_class", per_class=tree)
    shutil.rmtree(root / "tree_empty_class" / "train" / "cat")
    (root / "tree_empty_class" / "train" / "cat").mkdir()
    paths["tree_empty_class"] = root / "tree_empty_class"
    write_image_tree(root / "tree_corrupt_jpeg", per_class=tree, formats=("jpg",))
    (root / "tree_corrupt_jpeg" / "train" / "dog" / "0001.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    paths["tree_corrupt_jpeg"] = root / "tree_corrupt_jpeg"
    write_image_tree(root / "tree_grayscale", per_class=tree, formats=("png",))
    gray = root / "tree_grayscale" / "train" / "frog" / "0000.png"
    Image.open(gray).convert("L").save(gray)
    paths["tree_grayscale"] = root / "tree_grayscale"
    write_image_tree(root / "tree_wrong_size", per_class=tree, size=(40, 40), formats=("png",))
    paths["tree_wrong_size"] = root / "tree_wrong_size"

    paths.update(write_checkpoints(root / "checkpoints"))
    return {name: str(path) for name, path in paths.items()}


class _Payload:
    """Pickled into a checkpoint: unpickling it would create ``MARKER`` in the current folder."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def write_checkpoints(folder: Path) -> dict[str, Path]:
    """Checkpoints of ``ImageClassifier`` networks (weights only: the cases fail before training state
    matters): LeNet-5 for MNIST and for 3-channel data, a truncated one and a malicious one."""
    from architectures import create_model
    from lightning_modules.classifier import ImageClassifier

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    paths = {}
    for name, in_chans in (("ckpt_lenet", 1), ("ckpt_lenet_rgb", 3)):
        module = ImageClassifier(network=create_model("lenet5", num_classes=10, in_chans=in_chans))
        paths[name] = folder / f"{name}.ckpt"
        torch.save({"state_dict": module.state_dict(), "global_step": 0, "epoch": 0}, paths[name])
    paths["ckpt_truncated"] = folder / "truncated.ckpt"
    paths["ckpt_truncated"].write_bytes(paths["ckpt_lenet"].read_bytes()[:20_000])
    paths["ckpt_malicious"] = folder / "malicious.ckpt"
    evil = torch.load(paths["ckpt_lenet"], weights_only=True)
    evil["hyper_parameters"] = {"note": _Payload()}
    torch.save(evil, paths["ckpt_malicious"])
    return paths
