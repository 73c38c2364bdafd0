"""The notebook API: checkpoints of a real `ablate fit` load alone and predict raw images as evaluation did.

Three tiny runs (two steps each): the zoo's ``ZooModel`` on MNIST with the demo's config, a family
class (``AllCNN``) on CIFAR-10 with the per-pixel mean, and a user's own ``class_path``. Each entry
point is then used in a fresh Python process, as a notebook would, and compared with the classifier's
own outputs on the data module's evaluation batches computed here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import architectures
from datamodules import CIFAR10DataModule, MNISTDataModule
from datamodules.cifar import CIFAR10_CLASSES
from datamodules.synthetic import write_cifar10_pickles, write_mnist_idx
from experiments import cli
from lightning_modules import ImageClassifier
from tests.support import QUICK, REPO

TWO_STEPS = ("--trainer.max_steps=2", "--trainer.limit_val_batches=1", *QUICK)

USER_NETWORK = '''
from torch import nn


class TinyNet(nn.Module):
    """A user's own network, outside the zoo."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 8) -> None:
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.body = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.body(x)
'''


def _fit(workdir: Path, *args: str) -> Path:
    """``ablate fit`` in this process inside ``workdir``; the run folder it wrote."""
    workdir.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setenv("ABLATE_CACHE_DIR", str(workdir / "cache"))
        patch.syspath_prepend(str(workdir))  # a user's network module lives beside their runs
        assert cli.main(["fit", *args, *TWO_STEPS]) == 0
    (run,) = workdir.glob("runs/*/version_0")
    return run


def _reference(checkpoint: Path, network: torch.nn.Module, datamodule, images: torch.Tensor) -> torch.Tensor:
    """The classifier's probabilities on the data module's evaluation batch, loaded the old way."""
    model = ImageClassifier.load_from_checkpoint(checkpoint, network=network).eval()
    batch = datamodule.transform_batch((images, torch.zeros(len(images), dtype=torch.long)), train=False)[0]
    with torch.no_grad():
        return model(batch).softmax(dim=1)


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The demo's config (ZooModel inception_mnist) on MNIST in ``../shared/data`` of its work folder."""
    root = tmp_path_factory.mktemp("mnist")
    data = write_mnist_idx(root / "shared" / "data", num_train=300, num_test=20)
    run = _fit(
        root / "work",
        "--config",
        str(REPO / "experiments" / "quickstart_fast.yaml"),
        "--data.data_dir=../shared/data",
        "--data.init_args.download=false",
        "--data.init_args.val_size=50",
    )
    datamodule = MNISTDataModule(data_dir=str(data), download=False)
    images = datamodule.load_split(train=False).images[:10]
    network = architectures.ZooModel("inception_mnist", num_classes=10, in_chans=1)
    probs = _reference(run / "checkpoints" / "last.ckpt", network, datamodule, images)
    return {"run": run, "work": root / "work", "images": images, "probs": probs}


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A family class (AllCNN) on CIFAR-10 normalised by the per-pixel mean of its training split."""
    root = tmp_path_factory.mktemp("cifar")
    data = write_cifar10_pickles(root / "data", per_batch=20, num_test=12)
    settings = {"val_size": 20, "normalization": "pixel_mean"}
    run = _fit(
        root / "work",
        "--model.network=architectures.all_cnn.AllCNN",
        "--data=datamodules.CIFAR10DataModule",
        f"--data.data_dir={data}",
        "--data.download=false",
        "--data.batch_size=16",
        *(f"--data.{key}={value}" for key, value in settings.items()),
    )
    cache = str(root / "work" / "cache")
    datamodule = CIFAR10DataModule(data_dir=str(data), download=False, cache_dir=cache, **settings)
    datamodule.setup()
    images = datamodule.test_set.images[:8]
    checkpoint = run / "checkpoints" / "last.ckpt"
    probs = _reference(checkpoint, architectures.all_cnn.AllCNN(num_classes=10, in_chans=3), datamodule, images)
    return {"checkpoint": checkpoint, "images": images, "probs": probs}


@pytest.fixture(scope="module")
def user_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A user's own network (``my_nets.TinyNet``, a module of theirs) on MNIST."""
    root = tmp_path_factory.mktemp("user")
    data = write_mnist_idx(root / "data", num_train=300, num_test=20)
    (root / "work").mkdir()
    (root / "work" / "my_nets.py").write_text(USER_NETWORK)
    run = _fit(
        root / "work",
        "--model.network=my_nets.TinyNet",
        "--model.network.init_args.width=6",
        "--data=datamodules.MNISTDataModule",
        f"--data.data_dir={data}",
        "--data.download=false",
        "--data.val_size=50",
        "--data.batch_size=32",
    )
    return {"checkpoint": run / "checkpoints" / "last.ckpt", "modules": root / "work"}


def _python(code: str, cwd: Path, *paths: Path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, the repository (and ``paths``) importable; it must succeed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (REPO, *paths)))}
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _last_json(result: subprocess.CompletedProcess):
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.end_to_end
def test_load_from_checkpoint_needs_nothing_but_the_checkpoint(mnist_run, cifar_run, user_run, tmp_path) -> None:
    mnist_last = mnist_run["run"] / "checkpoints" / "last.ckpt"
    torch.save({"zoo": mnist_run["images"], "family": cifar_run["images"]}, tmp_path / "images.pt")
    # A checkpoint from before checkpoints recorded the network.
    old = torch.load(mnist_last, weights_only=True)
    del old["inference"]
    torch.save(old, tmp_path / "old.ckpt")
    code = f"""
import json, torch
from lightning_modules import ImageClassifier, load_model
from lightning_modules.errors import CheckpointError
images = torch.load({str(tmp_path / "images.pt")!r}, weights_only=True)
out = {{}}
for name, path in (("zoo", {str(mnist_last)!r}), ("family", {str(cifar_run["checkpoint"])!r})):
    model = ImageClassifier.load_from_checkpoint(path).eval()
    # the data module's own evaluation batch, as the predictor makes it
    batch = load_model(path).preprocess(images[name])
    with torch.no_grad():
        out[name] = [type(model.network).__name__, model(batch).softmax(1).tolist()]
user = ImageClassifier.load_from_checkpoint({str(user_run["checkpoint"])!r})
out["user"] = [type(user.network).__name__, user.network.body[0].out_channels]
try:
    ImageClassifier.load_from_checkpoint({str(tmp_path / "old.ckpt")!r})
except CheckpointError as error:
    out["old_alone"] = str(error)
import architectures
old = ImageClassifier.load_from_checkpoint({str(tmp_path / "old.ckpt")!r},
                                           network=architectures.create_model("inception_mnist", dataset="mnist"))
with torch.no_grad():
    out["old"] = old.eval()(load_model({str(mnist_last)!r}).preprocess(images["zoo"])).softmax(1).tolist()
print(json.dumps(out))
"""
    out = _last_json(_python(code, tmp_path, user_run["modules"]))
    assert out["zoo"][0] == type(architectures.create_model("inception_mnist")).__name__
    torch.testing.assert_close(torch.tensor(out["zoo"][1]), mnist_run["probs"], atol=1e-5, rtol=0)
    assert out["family"][0] == "AllCNN"
    torch.testing.assert_close(torch.tensor(out["family"][1]), cifar_run["probs"], atol=1e-5, rtol=0)
    assert out["user"] == ["TinyNet", 6]
    assert "old.ckpt does not record its network" in out["old_alone"] and "\n" not in out["old_alone"]
    torch.testing.assert_close(torch.tensor(out["old"]), mnist_run["probs"], atol=1e-5, rtol=0)


@pytest.mark.end_to_end
def test_predictor_preprocesses_raw_images_as_evaluation_did(cifar_run, tmp_path) -> None:
    images = cifar_run["images"]
    torch.save(images, tmp_path / "images.pt")
    code = f"""
import json, torch
from PIL import Image
from lightning_modules import load_model
predictor = load_model({str(cifar_run["checkpoint"])!r})
images = torch.load({str(tmp_path / "images.pt")!r}, weights_only=True)
pil = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
print(json.dumps({{"tensor": predictor(images).tolist(), "pil": predictor(pil).tolist(),
                   "classes": predictor.classes, "training": predictor.model.training}}))
"""
    out = _last_json(_python(code, tmp_path))
    torch.testing.assert_close(torch.tensor(out["tensor"]), cifar_run["probs"], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(out["pil"]), cifar_run["probs"], atol=1e-5, rtol=0)
    assert out["classes"] == list(CIFAR10_CLASSES)
    assert out["training"] is False


def _readme_snippet() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.end_to_end
def test_the_readme_python_api_runs_as_written(mnist_run) -> None:
    # The README's paths are relative to the repository root: here the run folder's work folder,
    # with ../shared/data beside it, as in the repository's checkout.
    result = _python(_readme_snippet(), mnist_run["work"])
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("runs/digits/")]
    expected = mnist_run["probs"].max(dim=1)
    assert [row[0] for row in rows] == [f"runs/digits/{i}.png" for i in range(10)]
    assert [int(row[1]) for row in rows] == expected.indices.tolist()
    assert [row[2] for row in rows] == [str(i) for i in expected.indices.tolist()]  # MNIST's class names
    torch.testing.assert_close(torch.tensor([float(row[3]) for row in rows]), expected.values, atol=1e-4, rtol=0)
    assert "load_model: using runs/quickstart_fast/version_0/checkpoints/last.ckpt" in result.stderr


@pytest.mark.end_to_end
def test_bad_inputs_end_in_one_clear_error(mnist_run, user_run, tmp_path) -> None:
    (tmp_path / "notes.ckpt").write_text("not a checkpoint\n")
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    # A forged record naming a function: only nn.Module subclasses are ever built from a checkpoint.
    forged = {"class_path": "os.system", "init_args": {"command": f"touch {tmp_path / 'ran'}"}}
    torch.save({"state_dict": {}, "inference": {"network": forged}}, tmp_path / "forged.ckpt")
    cases = {
        "missing": str(tmp_path / "nowhere.ckpt"),
        "not_a_checkpoint": str(tmp_path / "notes.ckpt"),
        "no_weights": str(tmp_path / "plain.pt"),
        "empty_run": str(tmp_path / "empty_run"),
        "user_not_importable": str(user_run["checkpoint"]),  # my_nets is not on this process's path
        "forged": str(tmp_path / "forged.ckpt"),
    }
    code = f"""
import json
from lightning_modules import load_model
out = {{}}
for name, path in {cases!r}.items():
    try:
        load_model(path)
    except Exception as error:
        out[name] = [type(error).__name__, str(error)]
print(json.dumps(out))
"""
    out = _last_json(_python(code, tmp_path))
    assert set(out) == set(cases)
    for name, (kind, message) in out.items():
        assert kind == "CheckpointError" and "\n" not in message, (name, message)
    assert out["missing"][1] == f"checkpoint {cases['missing']} does not exist"
    assert out["not_a_checkpoint"][1].startswith(f"{cases['not_a_checkpoint']} is not a checkpoint: not a file")
    assert "holds no model weights" in out["no_weights"][1]
    assert "without final.ckpt or last.ckpt" in out["empty_run"][1]
    assert "cannot rebuild its network 'my_nets.TinyNet'" in out["user_not_importable"][1]
    assert "No module named 'my_nets'" in out["user_not_importable"][1]
    assert "os.system does not correspond to a subclass of Module" in out["forged"][1]
    assert not (tmp_path / "ran").exists()


def test_zoo_models_default_to_the_dataset_of_their_variant() -> None:
    assert architectures.ZooModel("resnet20").in_chans == 3  # CIFAR-10's, not MNIST's one channel
    assert architectures.ZooModel("inception_mnist").in_chans == 1
    assert architectures.ZooModel("resnet20", in_chans=1).in_chans == 1
    net = architectures.create_model("resnet20", dataset="cifar100")
    assert (net.in_chans, net.num_classes) == (3, 100)
    assert architectures.create_model("lenet5", dataset="cifar10", num_classes=4).num_classes == 4
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; give one of mnist, cifar10, cifar100, imagenet"):
        architectures.create_model("resnet20", dataset="svhn")


def test_imagenet_style_modules_resize_and_crop_as_their_evaluation(tmp_path) -> None:
    from datamodules import ImageNetDataModule
    from lightning_modules.inference import Predictor, data_spec, datamodule_from_checkpoint

    original = ImageNetDataModule(data_dir=str(tmp_path), num_classes=3, crop_size=48, num_workers=0)
    rebuilt = datamodule_from_checkpoint({"inference": {"data": data_spec(original)}}, tmp_path / "run.ckpt")
    assert (type(rebuilt), rebuilt.crop_size, rebuilt.resize_size) == (ImageNetDataModule, 48, original.resize_size)
    model = ImageClassifier(network=architectures.create_model("lenet5", in_chans=3, num_classes=3))
    image = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)
    labels = torch.zeros(1, dtype=torch.long)
    expected = original.transform_batch((original.eval_transform(image)[None], labels), train=False)[0]
    assert expected.shape == (1, 3, 48, 48)
    torch.testing.assert_close(Predictor(model, rebuilt, ["a", "b", "c"]).preprocess([image]), expected)
