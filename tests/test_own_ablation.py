"""A researcher's own network, builder, shortcut and data module, and the README walkthrough of them.

The walkthrough test runs the README's "Your own ablation" section as written: its Python and
YAML blocks are written to an empty folder under the names their first line gives; each ``ablate``
command of its shell blocks runs there as a fresh process of the console script (the point: a
console script imports the user's modules from its working directory), and must exit 0 and write
a checkpoint. ``../shared/data`` becomes the real MNIST, or an IDX stand-in without it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from architectures import create_model, resnet_parts
from experiments.cli import main, run_lightning_cli
from tests.support import REPO, SHARED_DATA, write_synthetic_mnist

SECTION = "## Your own ablation"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)

BUILDER = """
from torch import nn


class Tiny(nn.Sequential):
    def __init__(self, num_classes: int, in_chans: int, width: int) -> None:
        super().__init__(nn.Conv2d(in_chans, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))
        self.num_classes, self.in_chans = num_classes, in_chans


def tiny(num_classes: int, in_chans: int, width: int = 4) -> nn.Module:
    return Tiny(num_classes, in_chans, width)
"""

SHORTCUT = """
from torch import nn

from architectures import register_shortcut


@register_shortcut("doubled")
class Doubled(nn.Module):
    def __init__(self, skip: nn.Module, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.skip = skip

    def forward(self, x, residual):
        return 2 * self.skip(x) + residual
"""


def test_a_module_in_the_working_directory_loads_by_class_path(
    tmp_path: Path, synthetic_mnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", str(tmp_path))])
    (tmp_path / "my_builder_net.py").write_text(BUILDER)
    argv = [
        "fit",
        "--model.network=my_builder_net.Tiny",
        "--model.network.width=4",
        "--data=datamodules.MNISTDataModule",
        f"--data.data_dir={synthetic_mnist}",
        "--data.val_size=100",
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
    ]
    assert main(argv) == 0
    assert sys.path[0] == os.getcwd()
    assert list(tmp_path.glob("runs/**/checkpoints/last.ckpt"))


@pytest.mark.parametrize("builder", ["my_builder_fn.tiny", "architectures.resnet.resnet20"])
def test_a_builder_function_as_class_path_gets_the_data_linked_in(
    builder: str, tmp_path: Path, synthetic_mnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_builder_fn.py").write_text(BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    cli = run_lightning_cli(
        [f"--model.network={builder}", "--data=datamodules.MNISTDataModule", f"--data.data_dir={synthetic_mnist}"],
        run=False,
    )
    network = cli.model.network
    assert (network.num_classes, network.in_chans) == (10, 1)  # MNIST's, where the builders default to 3 channels


def test_a_registered_builders_other_arguments_are_dict_kwargs(
    tmp_path: Path, synthetic_mnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cli = run_lightning_cli(
        [
            "--model.network=architectures.resnet.resnet20",
            "--model.network.dict_kwargs.downsample=B",
            "--data=datamodules.MNISTDataModule",
            f"--data.data_dir={synthetic_mnist}",
        ],
        run=False,
    )
    assert isinstance(cli.model.network.layer2[0].downsample[0], torch.nn.Conv2d)  # option B: a projection


def test_a_shortcut_registered_by_a_user_module_is_named_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resnet_parts, "SHORTCUTS", dict(resnet_parts.SHORTCUTS))
    (tmp_path / "my_doubled_shortcut.py").write_text(SHORTCUT)
    monkeypatch.syspath_prepend(str(tmp_path))
    network = create_model("resnet20", shortcut="my_doubled_shortcut.doubled")
    assert type(network.layer1[0].downsample).__name__ == "Doubled"
    with pytest.raises(ValueError, match="registered twice"):
        resnet_parts.register_shortcut("doubled")(resnet_parts.AddShortcut)


def walkthrough() -> list[tuple[str, str]]:
    """The section's code blocks, in order, as (language, text)."""
    readme = (REPO / "README.md").read_text()
    assert SECTION in readme, f"README.md has no section {SECTION!r}"
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return BLOCK.findall(section)


def commands(script: str) -> list[list[str]]:
    """The shell block's commands, continuation lines joined, as argv lists."""
    lines = script.replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.slow  # three training processes: about a minute each on two busy cores
@pytest.mark.end_to_end
def test_walkthrough_runs_as_written(tmp_path: Path) -> None:
    blocks = walkthrough()
    files = [text for language, text in blocks if language in ("python", "yaml")]
    runs = [argv for language, text in blocks if language == "bash" for argv in commands(text)]
    assert files and runs, "the section lost its code blocks"

    data = SHARED_DATA if (SHARED_DATA / "MNIST" / "raw").is_dir() else write_synthetic_mnist(tmp_path / "data")
    work = tmp_path / "my_project"
    work.mkdir()
    for text in files:
        name = re.fullmatch(r"# (\S+\.(?:py|yaml))", text.splitlines()[0])
        assert name, f"a code block must open with '# <file name>': {text.splitlines()[0]!r}"
        (work / name[1]).write_text(text)

    ablate = Path(sys.executable).with_name("ablate")
    # No PYTHONPATH: the user's modules must be found from the working directory alone.
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "WANDB_API_KEY")}
    env.update(WANDB_MODE="offline", NO_COLOR="1")
    for argv in runs:
        assert argv[0] == "ablate", f"the walkthrough runs ablate only: {shlex.join(argv)}"
        argv = [str(ablate), *(str(data) if arg == "../shared/data" else arg for arg in argv[1:])]
        before = set(work.glob("runs/**/checkpoints/*.ckpt"))
        result = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{shlex.join(argv)} exited {result.returncode}:\n{result.stderr[-3000:]}"
        assert set(work.glob("runs/**/checkpoints/*.ckpt")) - before, f"no checkpoint written by {shlex.join(argv)}"
