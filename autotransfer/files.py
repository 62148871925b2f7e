"""Atomic file writes: a temporary file in the same folder, then ``os.replace`` (atomic on POSIX).

A crash mid-write leaves the previous file intact, and two processes writing the same path leave one
complete file. The standard library has no such helper, so these few lines live here, used by the
report, the feature cache and saved models. PyTorch is imported only by :func:`save_safetensors`, so
``autotransfer report`` stays free of it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["atomic_write", "atomic_write_text", "save_safetensors"]


def _file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(temporary_path)``, then rename the temporary file to ``path``.

    Args:
        path: The file to (re)place; its folder is created if needed.
        write: Writes the whole content to the path it is given.

    Returns:
        ``path``. On any error (or interruption) the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())  # after writing: a writer may recreate the file (safetensors does)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` as a safetensors file atomically (made contiguous: safetensors stores row-major data)."""
    from safetensors.torch import save_file

    dense = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(dense, tmp, metadata=metadata))
