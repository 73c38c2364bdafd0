"""The README's quick commands run exactly as written.

The rule is visible in the README itself: a ```bash block whose first line starts with ``MARKER``
runs, as one bash script that stops at the first failing line, from a scratch folder laid out like
the repository root (its tracked entries linked in, ``../shared`` linked to the repository's sibling
``shared`` folder when there is one). Blocks run in README order in the same folder, so a block may
use what an earlier one wrote. Every other block is reported as skipped, with its line (downloads,
GPUs, SLURM, W&B and training that takes minutes carry no marker). A fresh process is the point:
these are shell lines, redirections included.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MARKER = "# runs in seconds on a CPU"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_blocks() -> list[tuple[int, str, str]]:
    """(line number, language, body) of every fenced block of the README."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, match.start()) + 1, match.group(1), match.group(2)) for match in FENCE.finditer(text)]


BLOCKS = [(line, body) for line, language, body in readme_blocks() if language in ("bash", "sh", "shell")]


@pytest.fixture(scope="module")
def scratch_root(tmp_path_factory) -> Path:
    """A folder that reads like the repository root; what the commands write stays in it."""
    base = tmp_path_factory.mktemp("readme")
    root = base / "repo"
    root.mkdir()
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in sorted({path.split("/")[0] for path in listed.splitlines()}):
        (root / name).symlink_to(REPO / name)  # tracked entries only: a user's my_run.yaml is never written over
    if (REPO.parent / "shared").is_dir():
        (base / "shared").symlink_to(REPO.parent / "shared")
    return root


@pytest.mark.parametrize(("line", "body"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
@pytest.mark.end_to_end
def test_quick_readme_block_runs_as_written(line: int, body: str, scratch_root: Path) -> None:
    first = body.splitlines()[0] if body.strip() else ""
    if not first.startswith(MARKER):
        pytest.skip(f"README.md:{line} not marked '{MARKER}': {first[:70]}")
    if "../shared" in body and not (scratch_root.parent / "shared").exists():
        pytest.skip(f"README.md:{line} reads ../shared/data, which this checkout lacks")
    env = {key: value for key, value in os.environ.items() if key != "ABLATE_DATA_DIR"}  # as a newcomer has it
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "ABLATE_CACHE_DIR": str(scratch_root.parent / "cache"),
        "WANDB_MODE": "offline",
        "NO_COLOR": "1",
    }
    print(f"README.md:{line} runs:\n{body}")
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", body],
        cwd=scratch_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=850,
    )  # under pytest's 900 s: its own message
    assert done.returncode == 0, (
        f"README.md:{line} failed (exit {done.returncode}):\n{body}\n--- stderr (end) ---\n{done.stderr[-3000:]}"
    )


def test_the_rule_finds_quick_blocks() -> None:
    """A rename of the marker on either side must not silently turn the test above into skips only."""
    assert any(body.startswith(MARKER) for _, body in BLOCKS), f"no README block opens with '{MARKER}'"
