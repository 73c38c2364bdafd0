"""An offline W&B run as the tests read it: through ``wandb leet inspect --json``, W&B's own reader of a
run's transaction log (one JSON record per line), never that log's file format.

Nested keys come out as W&B spells them: a Table logged under ``study/table`` has ``study/table._type``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def wandb_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of the run's ``run-*.wandb`` log, in order (``{"type": "history", "history": {...}}``)."""
    wandb = Path(sys.executable).with_name("wandb")
    result = subprocess.run(
        [str(wandb), "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"wandb leet inspect {run_dir}: {result.stderr[-2000:]}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def config_updates(run_dir: str | Path) -> list[set[str]]:
    """The keys of every config update in the run, in order."""
    return [
        set(record["config"].get("update") or {}) for record in wandb_records(run_dir) if record.get("type") == "config"
    ]


def read_wandb_run(run_dir: str | Path) -> dict[str, Any]:
    """``{"config", "history", "summary", "run"}`` of a local (e.g. offline) run; ``run`` holds its
    ``name``, ``group`` and ``tags`` as last set."""
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    run: dict[str, Any] = {"name": None, "group": None, "tags": []}
    for record in wandb_records(run_dir):
        kind = record.get("type")
        if kind == "run":  # wandb.init(config=...) arrives inside the run record; later ones rename or re-tag
            body = record["run"]
            config.update((body.get("config") or {}).get("update") or {})
            for field, key in (("name", "display_name"), ("group", "run_group"), ("tags", "tags")):
                if body.get(key):
                    run[field] = list(body[key]) if field == "tags" else body[key]
        elif kind == "config":
            config.update(record["config"].get("update") or {})
        elif kind == "history":
            history.append(record["history"].get("item") or {})
        elif kind == "summary":
            summary.update(record["summary"].get("update") or {})
    return {"config": config, "history": history, "summary": summary, "run": run}
