"""Checkpoints saved whole or not at all, on any local file system, and never of diverged weights.

Lightning's ``TorchCheckpointIO`` saves through an fsspec transaction, which writes a temporary
file in ``$TMPDIR`` and then *copies* it over the target when the runs folder is on another file
system (tmpfs, a network share, cluster scratch): a kill during the copy leaves a truncated
``last.ckpt`` (and the temporary file in ``$TMPDIR``), and a full disk leaves a short one that the
next ``--ckpt_path last`` picks up. ``AtomicCheckpointIO`` writes beside the target instead
(``lightning_modules.files.open_atomic``: same-folder temporary file, fsync, rename, fsync of the
folder), so the target is always either the previous checkpoint or the new one, complete.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from fsspec.utils import get_protocol
from pytorch_lightning.plugins.io import TorchCheckpointIO

from lightning_modules.errors import CheckpointError
from lightning_modules.files import SaveError, open_atomic, remove_stale_temporaries


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic and durable.

    A failed save (disk full, read-only or vanished folder, a name too long) raises
    ``CheckpointError`` with one line naming the file and the cause and saying that the previous
    file is intact; nothing is left behind. Temporary files of processes killed mid-save are removed
    at the next save into the same folder. Remote paths (``s3://`` ...) keep Lightning's behaviour
    (an object store replaces an object whole).

    Args:
        refuse_non_finite: Refuse to save weights that hold NaN or infinity (``DivergenceError``
            naming the last good checkpoint); ``ablate`` turns it off for ``check_finite=False``.
    """

    def __init__(self, refuse_non_finite: bool = True) -> None:
        super().__init__()
        self.refuse_non_finite = refuse_non_finite

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None or get_protocol(str(path)) != "file":
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        if self.refuse_non_finite:
            _refuse_non_finite(checkpoint, path)
        # Serialised in memory first (as Lightning does): torch's zip writer turns a failed write
        # into a bare RuntimeError, while a plain file write keeps the OSError and its cause.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(path.parent)
            with open_atomic(path, "wb") as handle:
                handle.write(buffer.getbuffer())
        except SaveError as error:
            raise CheckpointError(str(error)) from error
        except OSError as error:  # the folder could not be made (mkdir says "File exists" for a file in the way)
            cause = f"{path.parent} is a file, not a folder" if isinstance(error, FileExistsError) else error.strerror
            raise CheckpointError(f"could not save {path}: {cause or error}; nothing was written") from error


def _refuse_non_finite(checkpoint: dict[str, Any], path: Path) -> None:
    from lightning_modules.divergence import DivergenceError, last_good_checkpoint, non_finite_tensors
    from lightning_modules.run_folders import LAST

    bad = non_finite_tensors(checkpoint.get("state_dict") or {})
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise DivergenceError(
            f"refusing to save {path}: weight {bad[0]}{more} holds NaN or infinity (the run diverged); "
            f"{last_good_checkpoint(None, [path.parent / LAST, path])}"
        )
