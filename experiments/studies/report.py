"""``ablate report <study>``: our numbers next to the paper's, as Markdown, CSV, PNG (and W&B).

    ablate report resnet_shortcuts --tier short
    ablate report all_cnn --tier full --out /scratch/runs --wandb

Only runs with a completed ``result.json`` contribute numbers. Runs that failed are counted and
their reasons listed; arms without a finished run are shown as missing, never as a number.
"fail" follows the papers' rule: error above the study's threshold (20% for He et al. 2016).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from experiments.studies.study import TIERS, Study, StudyError, load_study
from experiments.studies.sweep import DEFAULT_OUT, CorruptResult, read_result
from lightning_modules.files import open_atomic, write_json_atomic, write_text_atomic


@dataclass
class Seeds:
    """The runs under one arm (or one grid point of it)."""

    completed: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # one note per failed or corrupt run
    diverged: int = 0  # of the failures, the runs whose loss or result was not finite
    unfinished: int = 0

    def add(self, other: Seeds, prefix: str) -> None:
        self.failures += [f"{prefix} {note}" for note in other.failures]
        self.diverged += other.diverged
        self.unfinished += other.unfinished


def _seed_results(point_dir: Path, metric: str) -> Seeds:
    """The records under one grid point.

    A result that is not a finite number is a divergence: a failure, never a number or a rank.
    A corrupt result.json is named and counted as a failure.
    """
    seeds = Seeds()
    for seed_dir in sorted(point_dir.glob("seed_*")):
        try:
            record = read_result(seed_dir)
        except CorruptResult as error:
            seeds.failures.append(f"{seed_dir.name}: {error}")
            continue
        if record is None:
            seeds.unfinished += 1
            continue
        value = record.get("metrics", {}).get(metric) if record["status"] == "completed" else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            seeds.completed.append(record)
            continue
        diverged = value is not None or bool(record.get("diverged"))
        reason = f"{metric} = {value}" if value is not None else record.get("reason") or f"finished without {metric}"
        seeds.failures.append(f"{seed_dir.name}: {'diverged: ' if diverged else ''}{reason}")
        seeds.diverged += diverged
    return seeds


def _select_point(study: Study, arm_dir: Path) -> tuple[str, Seeds]:
    """The grid point with the best mean validation accuracy of the final model (the papers' model
    selection: a learning rate chosen on validation, the model at the end of training tested).
    Records made before the final validation accuracy was kept are compared on their best one."""
    if not study.grid:
        return "", _seed_results(arm_dir, study.metric)
    points = (
        [(p, _seed_results(p, study.metric)) for p in sorted(arm_dir.iterdir()) if p.is_dir()]
        if (arm_dir.is_dir())
        else []
    )
    records = [r for _, point in points for r in point.completed]
    key = "val/acc" if records and all("val/acc" in r["metrics"] for r in records) else "val/acc_best"
    best, seeds = None, Seeds()
    for point_dir, point in points:
        seeds.add(point, point_dir.name)
        scores = [r["metrics"].get(key) for r in point.completed]
        if point.completed and all(score is not None for score in scores):
            score = statistics.fmean(scores)
            if best is None or score > best[0]:
                best = (score, point_dir.name, point.completed)
    if best is None:
        return "", seeds
    seeds.completed = best[2]
    return best[1], seeds


def runs_found(study: Study, tier: str, out: Path) -> bool:
    """Whether the tier's folder holds any run folder of the study's arms."""
    tier_dir = out / study.name / tier
    return any(any((tier_dir / arm).rglob("seed_*")) for arm in study.arms if (tier_dir / arm).is_dir())


def collect(study: Study, tier: str, out: Path) -> list[dict]:
    """One row per arm, in the paper's table order."""
    rows = []
    for arm in study.arms.values():
        selected, seeds = _select_point(study, out / study.name / tier / arm.name)
        completed = seeds.completed
        values = [float(r["metrics"][study.metric]) for r in completed]
        params = next((r.get("params") for r in completed if r.get("params")), None)
        fingerprints = sorted({r.get("fingerprint") or "none" for r in completed})
        row = {
            "arm": arm.name,
            "label": arm.label,
            "group": arm.group,
            "paper": arm.paper,
            "selected": selected,
            "n": len(values),
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else (0.0 if values else None),
            "median": statistics.median(values) if values else None,
            "values": values,
            "failed": len(seeds.failures),
            "diverged": seeds.diverged,
            "failures": seeds.failures,
            "unfinished": seeds.unfinished,
            "params": params,
            # What the runs changed beyond the arm's config (``ablate sweep --set``), e.g. the depth.
            "extra_args": sorted({" ".join(r.get("extra_args") or []) for r in completed} - {""}),
            # Which configuration and code produced the numbers; more than one is flagged.
            "fingerprints": fingerprints,
            "commits": sorted({r.get("git_commit") or "unknown" for r in completed}),
            "tested": sorted({r.get("tested") or "best (made before final-model testing)" for r in completed}),
        }
        ours = row[study.summary]
        # An arm whose every run diverged is the paper's "fail": it ranks last, it is no number.
        row["ours"] = "fail" if ours is None and seeds.diverged else ours
        # The paper's "fail" and the difference are statements about its full schedule: a compressed
        # tier is compared by the order of the arms instead (``ranks``).
        full = tier == "full"
        row["fail"] = row["ours"] == "fail" or (full and ours is not None and ours > study.fail_above)
        row["diff"] = ours - arm.paper if full and ours is not None and isinstance(arm.paper, (int, float)) else None
        rows.append(row)
    _rank(rows)
    return rows


def _average_ranks(values: list[float]) -> list[float]:
    """1-based ranks, lowest first, ties sharing their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _as_rankable(value: float | str) -> float:
    return float("inf") if value == "fail" else float(value)


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    """The rows of each group (``Arm.group``), in table order ("" for a study of one group)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    return groups


def _rank(rows: list[dict]) -> None:
    """``rank_paper`` and ``rank_ours`` over the arms with a result and a published value ('fail',
    the paper's or a diverged arm of ours, ranks after every number, as a tie), within each group
    the paper compares arms in (``Arm.group``)."""
    for group in _groups(rows).values():
        ranked = [row for row in group if row["ours"] is not None and row["paper"] is not None]
        paper = [_as_rankable(row["paper"]) for row in ranked]
        ours = [_as_rankable(row["ours"]) for row in ranked]
        for row, rank_paper, rank_ours in zip(ranked, _average_ranks(paper), _average_ranks(ours), strict=True):
            row["rank_paper"], row["rank_ours"] = rank_paper, rank_ours


def rank_agreements(rows: list[dict]) -> dict[str, tuple[float | None, int]]:
    """``rank_agreement`` within each group ("" for a study of one group)."""
    return {name: rank_agreement(group) for name, group in _groups(rows).items()}


def rank_agreement(rows: list[dict]) -> tuple[float | None, int]:
    """Spearman's rho between the paper's order of the arms and ours, and how many arms it covers
    (``rows`` of one group: their ranks are taken within it)."""
    pairs = [(row["rank_paper"], row["rank_ours"]) for row in rows if "rank_ours" in row]
    if len(pairs) < 3:
        return None, len(pairs)
    xs, ys = zip(*pairs, strict=True)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    cov = sum((x - mx) * (y - my) for x, y in pairs)
    spread = math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
    return (cov / spread if spread else None), len(pairs)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _paper(value) -> str:
    return "" if value is None else value if isinstance(value, str) else f"{value:.2f}"


def _ours(row: dict) -> str:
    if row["n"] == 0:
        return "diverged (fail)" if row["diverged"] else "failed" if row["failed"] else "missing"
    text = f"{row['mean']:.2f} ± {row['std']:.2f}"
    return text + (" (fail)" if row["fail"] else "")


def _fingerprint(row: dict) -> str:
    if not row["fingerprints"]:
        return ""
    return " ".join(row["fingerprints"]) + (" **mixed**" if len(row["fingerprints"]) > 1 else "")


def markdown(study: Study, tier: str, rows: list[dict]) -> str:
    lines = [
        f"## {study.title} — {study.table} [{tier} tier]",
        "",
        f"Paper: {study.paper_url}. Metric: {study.metric} (%), lower is better; the paper reports the "
        f"{study.summary}; 'fail' means above {study.fail_above:g}%.",
        "",
        "| arm | paper | ours mean ± std | median | ours − paper | rank paper / ours | seeds | failed | params "
        "| fingerprint |" + (" selected on val |" if study.grid else ""),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |" + (" --- |" if study.grid else ""),
    ]
    tested = sorted({model for row in rows for model in row["tested"]})
    source = f" ({study.test_model_source})" if study.test_model_source else ""
    lines[2] += (
        f" Ours: the test error of the {study.test_model} model"
        f"{source if study.test_model == 'final' else ' (the best val/acc checkpoint)'}."
    )
    if tested and tested != [study.test_model]:
        lines[2] += f" **Some runs tested another model: {', '.join(tested)}.**"
    changed = sorted({args for row in rows for args in row["extra_args"]})
    if tier != "full":
        lines[2] += (
            f" The {tier} tier compresses the paper's schedule: compare the ordering of the arms, "
            "not the numbers, with the paper's."
        )
    if changed:
        lines[2] += " The runs changed the paper's protocol: " + "; ".join(f"`{args}`" for args in changed) + "."
    for row in rows:
        diff = "" if row["diff"] is None else f"{row['diff']:+.2f}"
        params = f"{row['params']:,}" if row["params"] else ""
        selected = f" {row['selected']} |" if study.grid else ""
        rank = f"{row['rank_paper']:g} / {row['rank_ours']:g}" if "rank_ours" in row else ""
        lines.append(
            f"| {row['label']} | {_paper(row['paper'])} | {_ours(row)} | {_fmt(row['median'])} | "
            f"{diff} | {rank} | {row['n']} | {row['failed']} | {params} | {_fingerprint(row)} |{selected}"
        )
    agreements = rank_agreements(rows)
    if list(agreements) == [""]:
        rho, arms = agreements[""]
        if rho is not None:
            lines += [
                "",
                f"Order of the arms, ours against the paper's (Spearman's rho over {arms} arms, "
                f"'fail' tied last): **{rho:+.2f}**.",
            ]
    else:
        # The paper compares arms within a group (one depth, one table); a rho across groups would
        # mix that comparison with the groups' own difference (depth, dataset).
        within = [
            f"{name or 'ungrouped'}: **{rho:+.2f}** over {arms} arms"
            for name, (rho, arms) in agreements.items()
            if rho is not None
        ]
        without = [name or "ungrouped" for name, (rho, _) in agreements.items() if rho is None]
        lines += [
            "",
            "Order of the arms within each group the paper compares them in, ours against the paper's "
            f"(Spearman's rho, 'fail' tied last; the ranks above are within the group): {'; '.join(within) or 'none'}."
            + (f" No rho (under 3 ranked arms, or no spread): {', '.join(without)}." if without else ""),
        ]
    notes = [f"- {row['arm']}: {reason}" for row in rows for reason in row["failures"]]
    notes += [f"- {row['arm']}: {row['unfinished']} run(s) not finished" for row in rows if row["unfinished"]]
    if notes:
        lines += ["", "Not counted:", *notes]
    mixed = [row for row in rows if len(row["fingerprints"]) > 1 or len(row["commits"]) > 1]
    produced = sorted(
        {
            (fp, commit)
            for row in rows
            for fp in row["fingerprints"]
            for commit in row["commits"]
            if len(row["fingerprints"]) == 1 and len(row["commits"]) == 1
        }
    )
    lines += [
        "",
        "Produced by (fingerprint of the result-deciding configuration and code, `ablate sweep`; "
        "commit of the checkout):",
    ]
    lines += [
        f"- {row['arm']}: fingerprints {', '.join(row['fingerprints'])}; commits {', '.join(row['commits'])}"
        + (" — **mixed: these seeds ran different configurations or code**" if len(row["fingerprints"]) > 1 else "")
        for row in mixed
    ]
    lines += [
        f"- {fp} at {commit}: "
        + ", ".join(row["arm"] for row in rows if row["fingerprints"] == [fp] and row["commits"] == [commit])
        for fp, commit in produced
    ]
    return "\n".join(lines)


def to_csv(rows: list[dict]) -> str:
    fields = [
        "arm",
        "label",
        "group",
        "paper",
        "selected",
        "n",
        "mean",
        "std",
        "median",
        "ours",
        "diff",
        "rank_paper",
        "rank_ours",
        "fail",
        "failed",
        "diverged",
        "unfinished",
        "params",
        "fingerprints",
        "commits",
        "tested",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(
        [{**row, **{key: " ".join(row[key]) for key in ("fingerprints", "commits", "tested")}} for row in rows]
    )
    return buffer.getvalue()


def plot(study: Study, tier: str, rows: list[dict], path: Path) -> None:
    """Our mean ± std per arm as error bars, the paper's number as a red mark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(rows) + 2), 4.5))
    xs = range(len(rows))
    for x, row in zip(xs, rows, strict=True):
        if row["n"]:
            first = "ours (mean ± std)" not in ax.get_legend_handles_labels()[1]
            ax.errorbar(
                x,
                row["mean"],
                yerr=row["std"],
                fmt="o",
                color="tab:blue",
                capsize=4,
                label="ours (mean ± std)" if first else None,
            )
            ax.scatter([x] * row["n"], row["values"], color="tab:blue", alpha=0.3, s=10)
        if isinstance(row["paper"], (int, float)):
            ax.scatter(
                x,
                row["paper"],
                marker="_",
                s=400,
                color="tab:red",
                label="paper" if "paper" not in ax.get_legend_handles_labels()[1] else None,
            )
        elif row["paper"] == "fail":
            ax.annotate("paper: fail", (x, study.fail_above), ha="center", fontsize=7, color="tab:red")
    ax.axhline(study.fail_above, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(list(xs), [row["label"] for row in rows], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(f"{study.metric} (%)")
    ax.set_title(f"{study.title} — {study.table} [{tier}]", fontsize=10)
    finite = [v for row in rows for v in row["values"] if math.isfinite(v)]
    finite += [row["paper"] for row in rows if isinstance(row["paper"], (int, float))]
    if finite:
        ax.set_ylim(0, min(100, max(finite) * 1.15 + 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    with open_atomic(path, "wb") as handle:  # a reader never sees half a chart
        fig.savefig(handle, dpi=130, format="png")
    plt.close(fig)


def push_to_wandb(study: Study, tier: str, rows: list[dict], png: Path) -> None:
    """The table and chart as a W&B Table and Image in a report run (offline without a key)."""
    import wandb

    from lightning_modules.loggers import wandb_credentials_available

    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_credentials_available() else "offline")
    run = wandb.init(
        project="cnn-ablations",
        group=f"{study.name}-{tier}",
        job_type="report",
        name=f"report-{study.name}-{tier}",
        mode=mode,
        dir=str(png.parent.resolve()),
    )
    columns = ["arm", "paper", "mean", "std", "median", "n", "failed"]
    table = wandb.Table(
        columns=columns,
        data=[
            [row["label"], _paper(row["paper"]), row["mean"], row["std"], row["median"], row["n"], row["failed"]]
            for row in rows
        ],
    )
    run.log({f"{study.name}/table": table, f"{study.name}/chart": wandb.Image(str(png))})
    run.finish()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ablate report", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="study name under experiments/studies, or a study folder")
    parser.add_argument("--tier", choices=TIERS, default="short")
    parser.add_argument("--out", default=DEFAULT_OUT, help="root the sweep wrote to (default: runs)")
    parser.add_argument("--wandb", action="store_true", help="also push the table and chart to W&B")
    args = parser.parse_args(argv)
    study = load_study(args.study)
    out = Path(args.out).resolve()
    target = out / study.name / args.tier
    if not runs_found(study, args.tier, out):
        raise StudyError(
            f"no runs of {study.name} [{args.tier}] under {target}: check --out and --tier "
            f"(the sweep writes <out>/{study.name}/{args.tier}/<arm>/seed_<k>)"
        )
    rows = collect(study, args.tier, out)
    text = markdown(study, args.tier, rows)
    write_text_atomic(target / "report.md", text + "\n")
    write_text_atomic(target / "report.csv", to_csv(rows))
    write_json_atomic(target / "report.json", rows)
    plot(study, args.tier, rows, target / "report.png")
    if args.wandb:
        push_to_wandb(study, args.tier, rows, target / "report.png")
    print(text)
    print(f"\nwrote {target}/report.{{md,csv,json,png}}")
    return 0
