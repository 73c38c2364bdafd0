"""A study: a shared base config, one YAML per arm, the paper's numbers, and three tiers.

Layout of ``experiments/studies/<name>/``::

    study.yaml        # the paper, the table, each arm's published error, the tiers
    base.yaml         # the protocol every arm shares (a complete LightningCLI config)
    arms/<arm>.yaml   # what the arm changes, in as few keys as possible

A tier changes the schedule only (steps and how often to validate), never the arm: ``full`` is
the paper's protocol, ``short`` the same recipe compressed (milestones are fractions of the run,
so they move with it), ``smoke`` a few steps for CI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STUDIES_DIR = Path(__file__).parent
TIERS = ("full", "short", "smoke")
ARM_KEYS = {"paper", "label", "differs", "group"}


@dataclass(frozen=True)
class Arm:
    """One arm of a study.

    Args:
        name: File stem of ``arms/<name>.yaml``.
        config: Path of the arm's YAML.
        paper: The published error in percent, ``"fail"`` where the paper reports divergence or
            error above the study's threshold, or None where the paper has no number.
        label: How the paper's table names the arm.
        differs: Resolved-config keys (or key prefixes) the arm changes beyond the study's ``varies``,
            mapped to the source that has them differ (the paper's section, the authors' code file).
        group: The part of the paper's results the arm is compared within, where there are several: a
            column of the table (He et al. 2016b, Table 2: ResNet-110 and ResNet-164 compare units at one
            depth, not across depths) or another table (All-CNN's Tables 4 and 5). Arms are ranked
            against the paper within their group.
    """

    name: str
    config: Path
    paper: float | str | None
    label: str
    # Keys this arm changes beyond what its study's table varies, each with its source: where the
    # paper's protocol, or the authors' released code, differs between arms.
    differs: dict[str, str] = field(default_factory=dict)
    group: str = ""


@dataclass(frozen=True)
class Study:
    name: str
    root: Path
    title: str
    paper_url: str
    table: str
    metric: str
    fail_above: float
    summary: str  # "median" or "mean": the statistic the paper reports
    arms: dict[str, Arm]
    tiers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Hyper-parameters the paper picks per arm on validation, e.g. {"model.optimizer.init_args.lr":
    # [0.25, 0.1, 0.05, 0.01]}: every arm runs at every grid point, the report keeps the point with
    # the best validation accuracy and shows its test error.
    grid: dict[str, list[Any]] = field(default_factory=dict)
    # Which model's test error the table compares with the paper's: "final" (the weights at the end of
    # training, what the papers report) or "best" (the checkpoint with the best val/acc); every run
    # records both. `test_model_source` quotes the paper's protocol.
    test_model: str = "final"
    test_model_source: str = ""
    # The resolved-config keys (or key prefixes) the table varies; every arm differs from the
    # `reference` arm in these and in its own declared `differs` only (tests/test_study_arms.py).
    varies: tuple[str, ...] = ()
    reference: str = ""

    def grid_points(self) -> list[tuple[tuple[str, Any], ...]]:
        """Every combination of the grid's values, as ``((key, value), ...)``; one empty point if no grid."""
        points: list[tuple[tuple[str, Any], ...]] = [()]
        for key, values in self.grid.items():
            points = [(*point, (key, value)) for point in points for value in values]
        return points

    @property
    def base(self) -> Path:
        return self.root / "base.yaml"


class StudyError(ValueError):
    """A study or an arm that does not exist or is malformed."""


def list_studies() -> list[str]:
    return sorted(p.parent.name for p in STUDIES_DIR.glob("*/study.yaml"))


def load_study(name_or_path: str | Path) -> Study:
    """Read ``study.yaml`` of a study by name (under experiments/studies) or by folder path."""
    root = Path(name_or_path)
    if not (root / "study.yaml").is_file():
        root = STUDIES_DIR / str(name_or_path)
    meta_path = root / "study.yaml"
    if not meta_path.is_file():
        raise StudyError(f"unknown study {str(name_or_path)!r}; known studies: {', '.join(list_studies())}")
    meta = _read_meta(meta_path)
    arms = {}
    for arm_name, arm_meta in meta["arms"].items():
        arm_meta = arm_meta or {}
        unknown = sorted(set(arm_meta) - ARM_KEYS) if isinstance(arm_meta, dict) else None
        if unknown is None or unknown:
            # A misspelt key (`grup:`) would otherwise be dropped and change the report silently.
            found = f"keys {unknown}" if unknown else f"a {type(arm_meta).__name__}"
            raise StudyError(
                f"{meta_path}: arm {arm_name!r} has {found}; an arm takes a mapping of {', '.join(sorted(ARM_KEYS))}"
            )
        paper = arm_meta.get("paper")
        if not (paper is None or paper == "fail" or (isinstance(paper, (int, float)) and not isinstance(paper, bool))):
            raise StudyError(
                f"{meta_path}: arm {arm_name!r} has paper: {paper!r}; give the published error in percent, "
                "'fail', or null where the paper has no number"
            )
        config = root / "arms" / f"{arm_name}.yaml"
        if not config.is_file():
            raise StudyError(f"study {meta['name']!r} lists arm {arm_name!r} but {config} does not exist")
        arms[arm_name] = Arm(
            arm_name,
            config,
            paper,
            arm_meta.get("label", arm_name),
            dict(arm_meta.get("differs") or {}),
            str(arm_meta.get("group") or ""),
        )
    tiers = meta.get("tiers", {})
    missing = [tier for tier in TIERS if tier not in tiers]
    if missing:
        raise StudyError(f"study {meta['name']!r} does not define tiers {missing}")
    return Study(
        name=meta["name"],
        root=root,
        title=meta.get("title", meta["name"]),
        paper_url=meta.get("paper", ""),
        table=meta.get("table", ""),
        metric=meta.get("metric", "test/err"),
        fail_above=float(meta.get("fail_above", 20.0)),
        summary=meta.get("summary", "mean"),
        arms=arms,
        tiers=tiers,
        grid=meta.get("grid") or {},
        test_model=_test_model(meta),
        test_model_source=meta.get("test_model_source", ""),
        varies=tuple(meta.get("varies") or ()),
        reference=_reference(meta, arms),
    )


def _read_meta(path: Path) -> dict[str, Any]:
    """``study.yaml`` as a mapping with ``name`` and ``arms``; any other content is a ``StudyError``
    naming the file (and, for a syntax error, the line)."""
    from lightning_modules.config_files import ConfigFileError, check_yaml_text, describe_yaml_error

    try:
        text = path.read_text()
        check_yaml_text(text)
        meta = yaml.safe_load(text)
    except ConfigFileError as refused:
        raise StudyError(f"{path} refused: {refused}") from None
    except yaml.YAMLError as error:
        raise StudyError(f"{path} is not valid YAML{describe_yaml_error(error)}; fix the file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise StudyError(f"cannot read {path}: {error}") from None
    if not isinstance(meta, dict):
        raise StudyError(
            f"{path} holds {f'a {type(meta).__name__}' if meta is not None else 'nothing'}, not a mapping "
            "with `name:`, `arms:` and `tiers:` (see experiments/studies/*/study.yaml)"
        )
    for key, kind in (("name", str), ("arms", dict)):
        if not isinstance(meta.get(key), kind) or not meta[key]:
            raise StudyError(
                f"{path} needs `{key}:` ({'the study name' if key == 'name' else 'a mapping of arm names'}"
                f"{'' if key not in meta else f', got {meta[key]!r}'})"
            )
    if not isinstance(meta.get("tiers", {}), dict):
        raise StudyError(f"{path}: `tiers:` must map full, short and smoke to their settings, got {meta['tiers']!r}")
    return meta


def _reference(meta: dict[str, Any], arms: dict[str, Arm]) -> str:
    reference = meta.get("reference") or next(iter(arms))
    if reference not in arms:
        raise StudyError(f"study {meta['name']!r}: reference arm {reference!r} is not one of its arms")
    return reference


def _test_model(meta: dict[str, Any]) -> str:
    model = meta.get("test_model", "final")
    if model not in ("final", "best"):
        raise StudyError(f"study {meta['name']!r}: test_model must be 'final' or 'best', got {model!r}")
    return model


def grid_label(point: tuple[tuple[str, Any], ...]) -> str:
    """Folder name of a grid point: ``lr=0.1`` (last component of each key)."""
    return ",".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in point) or "default"


def select_arms(study: Study, only: list[str] | None = None, exclude: list[str] | None = None) -> list[Arm]:
    """The study's arms in table order, filtered; unknown names are an error, not a silent no-op."""
    for name in [*(only or []), *(exclude or [])]:
        if name not in study.arms:
            raise StudyError(f"study {study.name!r} has no arm {name!r}; arms: {', '.join(study.arms)}")
    return [arm for name, arm in study.arms.items() if (not only or name in only) and name not in (exclude or [])]
