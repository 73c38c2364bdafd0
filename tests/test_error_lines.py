"""Every error a user can cause ends with one line, ``ablate: error: <Type>: <message>``, naming the
file or key and what to do; a traceback only for bugs or with ``ABLATE_DEBUG=1``; under DDP the
first real error is the last line printed (docs/reliability.md, "One line, always").

Most cases run ``experiments.cli.main`` in this process; the DDP ones run the real ``ablate``.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
import torch
import yaml

from experiments import cli
from experiments.cli.error_lines import os_error_message
from experiments.studies.study import StudyError, load_study
from lightning_modules.ablate_cli import run_lightning_cli
from lightning_modules.config_files import ConfigFileError, check_yaml_text, expanded_size
from lightning_modules.output_folders import why_unwritable
from lightning_modules.transfer import read_state_dict
from tests.support import REPO, run_ablate, write_synthetic_mnist

PRESETS = REPO / "experiments" / "presets"


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" YAML document: each anchor is a list of ``width`` aliases of the previous."""
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def _config(tmp_path: Path, **trainer: object) -> Path:
    """A LeNet-5 on synthetic MNIST; one training and one validation batch."""
    data = write_synthetic_mnist(tmp_path / "mnist", n_train=300, n_test=50)
    config = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 1,
            "limit_train_batches": 1,
            "limit_val_batches": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            **trainer,
        },
        "model": {"network": {"class_path": "architectures.ZooModel", "init_args": {"name": "lenet5"}}},
        "data": {
            "class_path": "datamodules.MNISTDataModule",
            "init_args": {"data_dir": str(data), "batch_size": 16, "val_size": 50, "download": False},
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit status, last stderr line, all of stderr) of ``ablate <args>`` in this process (parse
    errors leave ``main`` as jsonargparse's ``SystemExit``, as they leave the real ``ablate``)."""
    try:
        code = cli.main(args)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    return code, _last_line(err), err


# ----- config files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_config_file_is_named(text: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.yaml").write_text(text)
    code, last, err = _fails(["fit", "--config", "empty.yaml"], capsys)
    assert code == 2
    assert last.startswith("ablate: error: ConfigError: config file empty.yaml is empty"), last
    assert "Traceback" not in err


def test_an_alias_bomb_is_refused_in_a_moment(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bomb.yaml").write_text(alias_bomb())
    start = time.monotonic()
    code, last, err = _fails(["fit", "--config", "bomb.yaml"], capsys)
    assert time.monotonic() - start < 30  # it took 40 s and ended in a MemoryError
    assert code == 2
    assert last.startswith("ablate: error: ConfigError: config file bomb.yaml refused: its YAML aliases expand"), last
    assert "Traceback" not in err


def test_an_alias_bomb_given_as_a_sub_config_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    """Not only --config: every YAML jsonargparse loads goes through the guarded loader."""
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path)
    (tmp_path / "bomb.yaml").write_text(alias_bomb())
    code, last, _ = _fails(["fit", "--config", str(config), "--data=bomb.yaml"], capsys)
    assert code == 2
    assert "ConfigError" in last and "aliases expand to more than" in last, last


def test_aliases_a_config_may_use_are_counted_not_refused() -> None:
    check_yaml_text("lr: &lr 0.1\noptimizer: {lr: *lr}\nsched: {peak: *lr, base: [*lr, *lr]}\n")
    # the mapping, key a, [1, 2] (3 nodes), key b, and [*x, *x] (1 + 2 x 3)
    assert expanded_size(yaml.compose("a: &x [1, 2]\nb: [*x, *x]\n")) == 1 + 1 + 3 + 1 + 7
    with pytest.raises(ConfigFileError, match="refers to the node that contains it"):
        check_yaml_text("a: &x [1, *x]\n")
    with pytest.raises(ConfigFileError, match="billion laughs"):
        check_yaml_text(alias_bomb(levels=6, width=10))


# ----- values in range ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "expect"),
    [
        ("--trainer.val_check_interval=0", "trainer.val_check_interval=0 would never validate"),
        ("--trainer.val_check_interval=1.5", "trainer.val_check_interval=1.5 is out of range"),
        ("--trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0 is out of range"),
        ("--trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch=0 is out of range"),
        ("--trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0 is out of range"),
        ("--trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1"),
        ("--data.num_workers=-1", "data.init_args.num_workers=-1 is out of range"),
    ],
)
def test_values_out_of_range_are_refused_before_the_run(
    flag: str, expect: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    code, last, err = _fails(["fit", "--config", str(_config(tmp_path)), flag], capsys)
    assert code == 2
    assert last.startswith("ablate: error: ConfigError: ") and expect in last, last
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists(), "refused before any folder was made"


@pytest.mark.parametrize(
    ("flag", "expect"),
    [
        ("--model.ema_decay=0.9", "model.ema_decay is now ema.decay"),
        ("--model.freeze=[features]", "model.freeze is now fine_tune.freeze"),
        ("--model.weights=alexnet.pth", "model.weights is now fine_tune.weights"),
        ("--model.tta_flip=true", "model.tta_flip is now test_time.flip"),
        ("--model.channels_last=true", "model.channels_last is now channels_last"),
    ],
)
def test_a_setting_that_became_a_callbacks_says_where_it_went(
    flag: str, expect: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    code, last, _ = _fails(["fit", "--config", str(_config(tmp_path)), flag], capsys)
    assert code == 2 and last.startswith("ablate: error: ConfigError: ") and last.endswith(f"({expect})"), last


def test_a_config_saved_before_the_callbacks_loads_with_its_settings_moved(tmp_path: Path, monkeypatch) -> None:
    """Every run's config.yaml written before names the model's old EMA and freezing settings; unset
    ones are dropped, set ones go to the callbacks' keys, and a new key given too wins."""
    monkeypatch.chdir(tmp_path)
    old = {"model": {"ema_decay": 0.9, "ema_eval": False, "freeze": None, "freeze_bn_stats": True,
                     "head_lr_multiplier": 10.0, "weights": None, "skip_mismatched_head": False,
                     "tta_flip": True, "confusion_matrix": True, "channels_last": True, "compile": False}}  # fmt: skip
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    args = ["--config", str(_config(tmp_path)), "--config", str(tmp_path / "old.yaml"), "--ema.evaluate=true"]
    config = run_lightning_cli(args, run=False).config
    assert config.ema.decay == 0.9 and config.ema.evaluate is True
    assert config.fine_tune.head_lr_multiplier == 10.0 and config.fine_tune.freeze is None
    assert config.fine_tune.weights is None and config.fine_tune.skip_mismatched_head is False
    assert config.test_time.flip is True and config.test_time.confusion_matrix is True
    assert "tta_flip" not in config.model and "confusion_matrix" not in config.model
    assert config.channels_last is True and config.compile is False
    assert "channels_last" not in config.model and "compile" not in config.model
    assert "ema_decay" not in config.model and "head_lr_multiplier" not in config.model
    assert "weights" not in config.model and "skip_mismatched_head" not in config.model


def test_a_checkpoint_saved_before_the_callbacks_is_tested_with_its_settings_from_the_config(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """Lightning reads a checkpoint's hyper-parameters into the config; those of a checkpoint written
    before the settings moved name the old keys, which would refuse the run."""
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path)
    assert cli.main(["fit", "--config", str(config)]) == 0
    (last,) = tmp_path.glob("runs/*/version_0/checkpoints/last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["hyper_parameters"].update(
        ema_decay=0.0, ema_eval=False, weights=None, skip_mismatched_head=True, freeze=None, freeze_bn_stats=True,
        head_lr_multiplier=1.0, tta_flip=False, confusion_matrix=True, channels_last=False, compile=False,
    )  # fmt: skip
    torch.save(checkpoint, tmp_path / "old.ckpt")
    code = cli.main(["test", "--config", str(config), f"--ckpt_path={tmp_path / 'old.ckpt'}", "--test_time.flip=true"])
    assert code == 0, capsys.readouterr().err[-2000:]
    saved = tmp_path / "runs" / "default" / "version_1" / "config.yaml"  # the test's own folder
    assert yaml.safe_load(saved.read_text())["test_time"]["flip"] is True, "the command line's, not dropped"


def test_a_freeze_name_that_matches_nothing_is_refused_before_any_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code, last, _ = _fails(["fit", "--config", str(_config(tmp_path)), "--fine_tune.freeze=[convs]"], capsys)
    assert code == 2 and last.startswith("ablate: error: ConfigError: fine_tune.freeze: 'convs' matches no "), last
    assert not (tmp_path / "runs").exists(), "refused before any folder was made"


def test_lightning_misconfiguration_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code, last, err = _fails(["fit", "--config", str(_config(tmp_path)), "--trainer.max_time=abc"], capsys)
    assert code == 2
    assert last.startswith("ablate: error: MisconfigurationException: `Timer(duration='abc')` is not a valid"), last
    assert "Traceback" not in err


def test_a_package_a_setting_needs_is_named_without_a_traceback(monkeypatch, capsys) -> None:
    def needs_xla(name: str, argv: list[str]) -> int:
        raise ModuleNotFoundError("Requirement 'torch_xla>=1.13' not met. HINT: Try running `pip install -U torch_xla`")

    monkeypatch.setattr(cli, "_run_tool", needs_xla)
    code, last, err = _fails(["zoo"], capsys)
    assert code == 2 and "Traceback" not in err
    assert last.startswith("ablate: error: ModuleNotFoundError: Requirement 'torch_xla>=1.13' not met"), last


# ----- output folders -------------------------------------------------------------------------------


def test_runs_under_a_file_is_refused_naming_the_path(tmp_path: Path, monkeypatch, capsys) -> None:
    """The defaults preset logs to ./runs; here ./runs is a file."""
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path)
    (tmp_path / "runs").write_text("not a folder")
    code, last, err = _fails(["fit", "--config", str(config)], capsys)
    assert code == 2
    assert last.startswith("ablate: error: ConfigError: cannot write to runs: Not a directory"), last
    assert "choose another trainer.default_root_dir" in last
    assert "Traceback" not in err


def test_an_over_long_save_dir_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path)
    long = str(tmp_path / ("x" * 300))
    code, last, _ = _fails(["fit", "--config", str(config), f"--trainer.default_root_dir={long}"], capsys)
    assert code == 2
    assert "cannot write to" in last and "File name too long" in last, last
    assert len(last) < 400


def test_why_unwritable() -> None:
    assert why_unwritable("s3://bucket/runs") is None
    assert "File name too long" in why_unwritable("/tmp/" + "y" * 256)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert why_unwritable(locked / "runs").startswith("Permission denied")
    finally:
        locked.chmod(0o700)


def test_os_errors_name_the_path_and_what_to_do() -> None:
    line = os_error_message(OSError(errno.EROFS, "Read-only file system", "runs/default"))
    assert line.startswith("runs/default: Read-only file system; check the path, or choose another")
    assert "free space" in os_error_message(OSError(errno.ENOSPC, "No space left on device", "runs/x.ckpt"))
    assert os_error_message(OSError("a message of its own")) == "a message of its own"


# ----- weights files --------------------------------------------------------------------------------


def test_weights_files_that_are_not_state_dicts_say_what_is_expected(tmp_path: Path) -> None:
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match=r"tensor.pt holds a Tensor, not a state dict; --fine_tune.weights takes"):
        read_state_dict(str(tmp_path / "tensor.pt"))
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(ValueError, match=r"notes.txt is not a PyTorch file .*torchvision weights name"):
        read_state_dict(str(tmp_path / "notes.txt"))
    torch.save({"state_dict": {"a": 1}}, tmp_path / "numbers.pt")
    with pytest.raises(ValueError, match="holds a dict of other things than tensors"):
        read_state_dict(str(tmp_path / "numbers.pt"))


# ----- study.yaml -----------------------------------------------------------------------------------


def _study(tmp_path: Path, text: str) -> Path:
    study = tmp_path / "study"
    (study / "arms").mkdir(parents=True)
    (study / "study.yaml").write_text(text)
    return study


def test_a_study_yaml_syntax_error_names_the_file_and_line(tmp_path: Path, capsys) -> None:
    study = _study(tmp_path, "name: broken\narms: [a, b\n  foo: : bar\n")
    with pytest.raises(StudyError, match=r"study.yaml is not valid YAML at line 3, column 6"):
        load_study(study)
    for tool in (["sweep", str(study), "--tier", "smoke"], ["report", str(study)]):
        code, last, err = _fails(tool, capsys)
        assert code == 2
        assert last.startswith("ablate: error: StudyError: ") and "at line 3" in last, last
        assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("- a list\n", "holds a list, not a mapping"),
        ("", "holds nothing"),
        ("arms: {a: {}}\n", "needs `name:`"),
        ("name: x\narms:\n", "needs `arms:`"),
        ("name: x\narms: {a: {}}\ntiers: smoke\n", "`tiers:` must map"),
        (
            "name: x\narms: {a: {paper: 5, grup: T}}\n",
            "arm 'a' has keys .'grup'.; an arm takes a mapping of differs, group",
        ),
        ("name: x\narms: {a: 5}\n", "arm 'a' has a int"),
        ("name: x\narms: {a: {paper: fial}}\n", "arm 'a' has paper: 'fial'; give the published error"),
    ],
)
def test_a_malformed_study_yaml_is_a_study_error(text: str, expect: str, tmp_path: Path) -> None:
    with pytest.raises(StudyError, match=expect.replace("`", ".")):
        load_study(_study(tmp_path, text))


# ----- tools, bugs, ABLATE_DEBUG --------------------------------------------------------------------


def test_a_tool_usage_error_ends_with_the_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["sweep", "resnet_depth", "--tier", "bogus"])
    assert stop.value.code == 2
    last = _last_line(capsys.readouterr().err)
    assert last.startswith("ablate: error: UsageError: ablate sweep: argument --tier: invalid choice: 'bogus'"), last


def test_zoo_without_a_match_is_an_error_line(tmp_path: Path, capsys) -> None:
    code, last, _ = _fails(["zoo", "--pattern", "nosuchnet*", "--no-macs"], capsys)
    assert code == 2
    assert last.startswith("ablate: error: KeyError: no registered network matches --pattern 'nosuchnet*'"), last
    (tmp_path / "a_file").write_text("")
    code, last, _ = _fails(["zoo", "--plot", str(tmp_path / "a_file" / "zoo.png")], capsys)
    assert code == 2 and "cannot write --plot" in last and "Not a directory" in last, last


def test_a_bug_keeps_its_traceback_and_ends_with_the_one_line(monkeypatch, capsys) -> None:
    def broken(name: str, argv: list[str]) -> int:
        raise RuntimeError("an internal error")

    monkeypatch.setattr(cli, "_run_tool", broken)
    code, last, err = _fails(["zoo"], capsys)
    assert code == 2
    assert "Traceback" in err
    assert last == "ablate: error: RuntimeError: an internal error"


def test_ablate_debug_prints_the_traceback_of_user_errors_too(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.yaml").write_text("")
    code, _, err = _fails(["fit", "--config", "empty.yaml"], capsys)
    assert "Traceback" not in err
    monkeypatch.setenv("ABLATE_DEBUG", "1")
    code, last, err = _fails(["fit", "--config", "empty.yaml"], capsys)
    assert code == 2 and "Traceback" in err
    assert last.startswith("ablate: error: ConfigError: config file empty.yaml is empty"), last


# ----- DDP: the first real error is the last line ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.end_to_end
def test_under_ddp_the_failing_ranks_line_is_the_last(rank: int, tmp_path: Path) -> None:
    """One rank fails at its first batch (tests/rank_faults.py), the other loses its peer in the
    gradient all-reduce: gloo's "Connection closed by peer" traceback came after the real error."""
    config = _config(tmp_path)
    result = run_ablate(
        "fit",
        "--config",
        str(config),
        "--config",
        str(PRESETS / "trainer_ddp_cpu.yaml"),
        "--trainer.callbacks+=tests.rank_faults.FailOnRank",
        f"--trainer.callbacks.rank={rank}",
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode != 0
    assert _last_line(result.stderr) == f"ablate: error: ValueError: rank fault for the test (rank {rank})", (
        result.stderr[-3000:]
    )
    assert "Connection closed by peer" not in result.stderr
    assert "Traceback" not in result.stderr
