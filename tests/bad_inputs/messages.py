"""Bad-input cases. Messages: every error a user can cause ends in one line (configs, paths, DDP)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.bad_inputs.case import CIFAR, FIT, TEST, Case  # noqa: F401

CASES: list[Case] = [
    # ----- config files: refused naming the file ---------------------------------------------------------
    Case(
        "config-alias-bomb",
        "fit --config {alias_bomb}",
        "alias_bomb.yaml refused: its YAML aliases expand to more than 100,000 values",
    ),
    Case("config-alias-bomb-as-data", f"{FIT} --data={{alias_bomb}}", "its YAML aliases expand to more than"),
    Case("config-empty", "fit --config {empty_yaml}", "empty_yaml.yaml is empty; it should hold the run's settings"),
    Case("config-comments-only", "fit --config {comments_yaml}", "comments_yaml.yaml is empty"),
    Case("config-syntax-error", "fit --config {broken_yaml}", "broken_yaml.yaml is not valid YAML at line 3, column 1"),
    Case("config-not-a-mapping", "fit --config {list_yaml}", "holds a list, not a mapping of settings"),
    Case("config-not-text", "fit --config {binary_yaml}", "is not UTF-8 text"),
    Case("config-is-a-folder", "fit --config {folder}", "Path is not a file"),
    Case("unknown-subcommand", "train --config {config}", "invalid choice: 'train'"),
    # ----- values that parse but cannot work -------------------------------------------------------------
    Case("seed-not-a-number", f"{FIT} --seed_everything=abc", 'Parser key "seed_everything"'),
    Case(
        "val-check-interval-zero",
        f"{FIT} --trainer.val_check_interval=0",
        "ConfigError: trainer.val_check_interval=0 would never validate",
    ),
    Case(
        "val-check-interval-above-one",
        f"{FIT} --trainer.val_check_interval=1.5",
        "ConfigError: trainer.val_check_interval=1.5 is out of range",
    ),
    Case("log-every-zero-steps", f"{FIT} --trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0 is out of range"),
    Case(
        "accumulate-zero-batches",
        f"{FIT} --trainer.accumulate_grad_batches=0",
        "trainer.accumulate_grad_batches=0 is out of range",
    ),
    Case("negative-gradient-clip", f"{FIT} --trainer.gradient_clip_val=-1.0", "trainer.gradient_clip_val=-1.0"),
    Case("negative-workers", f"{FIT} --data.num_workers=-1", "data.init_args.num_workers=-1 is out of range"),
    Case("max-time-not-a-duration", f"{FIT} --trainer.max_time=abc", "is not a valid duration"),
    Case(
        "accelerator-without-its-package",
        f"{FIT} --trainer.accelerator=tpu",
        "ModuleNotFoundError: Requirement 'torch_xla",
    ),
    Case(
        "data-dir-with-unicode-and-space",
        f"{FIT} --data.data_dir='{{folder}}/dätä ördner'",
        "DataNotFoundError: MNIST not found under",
    ),
    # ----- --fine_tune.weights that is not a state dict ------------------------------------------------------
    Case(
        "weights-plain-tensor",
        f"{FIT} --fine_tune.weights={{weights_tensor}}",
        "holds a Tensor, not a state dict; --fine_tune.weights takes a file saved with torch.save",
    ),
    Case(
        "weights-text-file",
        f"{FIT} --fine_tune.weights={{weights_text}}",
        "is not a PyTorch file (torch.save writes a zip archive); --fine_tune.weights takes",
    ),
    Case(
        "weights-a-folder", f"{FIT} --fine_tune.weights={{folder}}", "no such file, and not a torchvision weights name"
    ),
    # ----- output folders --------------------------------------------------------------------------------
    Case(
        "output-under-a-file",
        f"{FIT} --trainer.default_root_dir={{a_file}}/runs",  # a_file.yaml/runs
        "ConfigError: cannot write to",
    ),
    Case("logger-under-a-file", f"{FIT} --config {{logger_under_file}}", "a_file.yaml/logs: Not a directory"),
    Case("output-name-too-long", f"{FIT} --trainer.default_root_dir={{long_name}}", "File name too long"),
    # ----- study.yaml and the tools ----------------------------------------------------------------------
    Case(
        "study-yaml-syntax-error-sweep",
        "sweep {study_syntax} --tier smoke",
        "study_syntax/study.yaml is not valid YAML at line 3, column 6",
    ),
    Case("study-yaml-syntax-error-report", "report {study_syntax}", "study.yaml is not valid YAML at line 3"),
    Case("study-yaml-a-list", "sweep {study_list} --tier smoke", "study.yaml holds a list, not a mapping"),
    Case("study-yaml-without-arms", "sweep {study_no_arms} --tier smoke", "study.yaml needs `arms:`"),
    Case("sweep-missing-study", "sweep {folder}/no_such_study --tier smoke", "StudyError: unknown study"),
    Case(
        "sweep-unknown-tier",
        "sweep resnet_depth --tier bogus",
        "UsageError: ablate sweep: argument --tier: invalid choice: 'bogus'",
    ),
    Case("report-missing-folder", "report {folder}/nowhere", "StudyError: unknown study"),
    Case("zoo-unknown-argument", "zoo resnet2000", "UsageError: ablate zoo: unrecognized arguments: resnet2000"),
    Case(
        "zoo-no-network-matches",
        "zoo --pattern 'nosuchnet*' --no-macs",
        "KeyError: no registered network matches --pattern 'nosuchnet*'",
    ),
    Case("zoo-plot-under-a-file", "zoo --plot {a_file}/zoo.png", "cannot write --plot"),
    Case("shapes-unknown-network", "shapes resnet2000", "unknown architecture 'resnet2000'"),
    Case("landscape-missing-run", "landscape {folder}/no_run", "no such run directory or checkpoint"),
    Case("slurm-without-its-arguments", "slurm", "UsageError: ablate slurm: the following arguments are required"),
]


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" document: 9 levels of 9 aliases, 387 million values once expanded."""
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def _study(root: Path, name: str, text: str) -> Path:
    (root / name / "arms").mkdir(parents=True, exist_ok=True)
    (root / name / "study.yaml").write_text(text)
    return root / name


def write_inputs(root: Path) -> dict[str, Path]:
    """Create the inputs this family's cases name under ``root``; returns ``{placeholder: path}``."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {"folder": root}
    files = {
        "alias_bomb": alias_bomb(),
        "empty_yaml": "",
        "comments_yaml": "# settings to come\n\n",
        "broken_yaml": "trainer:\n  max_epochs: 1\n- model\n",
        "list_yaml": "- trainer\n- model\n",
        "a_file": "a file where a folder is expected\n",
        "logger_under_file": "",  # written below, once a_file's path is known
    }
    for name, text in files.items():
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(text)
    paths["logger_under_file"].write_text(
        "trainer:\n  logger:\n    - class_path: pytorch_lightning.loggers.CSVLogger\n"
        f"      init_args: {{save_dir: {paths['a_file']}/logs}}\n"
    )
    paths["binary_yaml"] = root / "binary.yaml"
    paths["binary_yaml"].write_bytes(bytes(range(128, 256)) * 4)
    paths["weights_tensor"] = root / "tensor.pt"
    torch.save(torch.zeros(3), paths["weights_tensor"])
    paths["weights_text"] = root / "weights.txt"
    paths["weights_text"].write_text("these are not weights\n")
    paths["long_name"] = root / ("n" * 300)
    paths["study_syntax"] = _study(root, "study_syntax", "name: broken\narms: [a, b\n  foo: : bar\n")
    paths["study_list"] = _study(root, "study_list", "- name\n- arms\n")
    paths["study_no_arms"] = _study(root, "study_no_arms", "name: no_arms\narms:\n")
    return paths
