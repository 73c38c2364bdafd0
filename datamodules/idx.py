"""IDX files (LeCun's MNIST format), plain or gzipped, checked against their own header.

An IDX file is a 4-byte magic number (``00 00 08 <ndim>`` for unsigned bytes), ``ndim`` big-endian
uint32 dimensions, then the bytes. The header says exactly how long the data is, so a truncated
download or a corrupt header is caught before a byte is interpreted, and a header that promises
more than the file holds (10^12 bytes, say) is refused without trying to read that much.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from datamodules.base import DataFormatError

_CHUNK = 1 << 20


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array of an IDX file; gzip-compressed when the name ends in ``.gz``.

    Raises:
        DataFormatError: one line naming the file: unreadable, not unsigned-byte IDX, or a size that
            disagrees with its header.
    """
    path = Path(path)
    compressed = path.name.endswith(".gz")
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as handle:
            header = handle.read(4)
            if len(header) < 4 or header[:3] != b"\x00\x00\x08" or header[3] == 0:
                raise DataFormatError(
                    f"{path} is not an unsigned-byte IDX file (magic number {header.hex() or 'missing'}, "
                    "expected 000008 then the number of dimensions). Delete it and download again."
                )
            raw_dims = handle.read(4 * header[3])
            if len(raw_dims) < 4 * header[3]:
                raise DataFormatError(
                    f"{path} is truncated: its header announces {header[3]} dimensions but ends after "
                    f"{len(raw_dims) // 4}. Delete it and download again."
                )
            dims = struct.unpack(f">{header[3]}I", raw_dims)
            size = math.prod(dims)
            if compressed:
                # Read at most one byte more than promised: a lying header cannot make us allocate it.
                chunks, got = [], 0
                while got <= size and (chunk := handle.read(min(_CHUNK, size + 1 - got))):
                    chunks.append(chunk)
                    got += len(chunk)
                data = b"".join(chunks)
                if len(data) != size:
                    found = f"{len(data):,}" if len(data) <= size else f"more than {size:,}"
                    raise DataFormatError(
                        f"{path} is truncated or corrupt: its header promises {size:,} bytes of data "
                        f"(shape {dims}) but it decompresses to {found}. Delete it and download again."
                    )
            else:
                expected, actual = 4 + len(raw_dims) + size, os.fstat(handle.fileno()).st_size
                if actual != expected:
                    raise DataFormatError(
                        f"{path} is truncated or corrupt: its header promises {expected:,} bytes "
                        f"(shape {dims}) but the file has {actual:,}. Delete it and download again."
                    )
                data = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        reason = getattr(error, "strerror", None) or f"{type(error).__name__}: {error}"
        raise DataFormatError(f"{path} is unreadable ({reason}). Delete it and download again.") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)
