"""Checkpoint files that cannot be half-written or silently damaged.

:class:`AtomicCheckpointIO` writes each checkpoint to ``<name>.tmp`` in the same directory, fsyncs it and
``os.replace``s it into place, so a kill during the write leaves the previous checkpoint intact (and at most a stray
``.tmp``), never a truncated ``.ckpt``. Beside each checkpoint it writes ``<name>.ckpt.sha256``, the SHA-256 of the
checkpoint's bytes, and every load (``--ckpt_path`` for resume and for ``eval.py``) checks it first: a damaged,
truncated or empty file is refused with one line that names it and the newest intact checkpoint beside it. A
checkpoint without a checksum file (written by another tool, or copied without it) is loaded only if every weight in
it is finite. A file that holds objects besides tensors and plain containers (a pickle payload) is refused: loads are
``weights_only``, and the one line says so instead of suggesting ``weights_only=False``. Remote (fsspec) paths fall
back to Lightning's own reader and writer.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_unlearn.core.errors import LitUnlearnError

SUFFIX = ".sha256"


class CheckpointError(LitUnlearnError):
    """A checkpoint file is damaged or unreadable; the message names it and the newest intact one beside it."""


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def problem_with(path: Path) -> str | None:
    """Why ``path`` cannot be trusted (missing, empty, checksum mismatch), or None when it is intact."""
    if not path.is_file():
        return "does not exist"
    if path.stat().st_size == 0:
        return "is empty"
    recorded = checksum_path(path)
    if recorded.is_file():
        expected = recorded.read_text().split()[0] if recorded.read_text().strip() else ""
        if sha256_of(path) != expected:
            return f"does not match its checksum ({recorded.name}): it is damaged or truncated"
    return None


def newest_intact(directory: Path, besides: Path | None = None) -> Path | None:
    """The most recently written checkpoint in ``directory`` that passes :func:`problem_with` (other than ``besides``)."""
    found = sorted((p for p in directory.glob("*.ckpt") if p != besides), key=lambda p: p.stat().st_mtime,
                   reverse=True)
    return next((p for p in found if problem_with(p) is None), None)


def _refuse(path: Path, why: str) -> CheckpointError:
    other = newest_intact(path.parent, besides=path)
    hint = f"the newest intact checkpoint beside it is {other}: pass --ckpt_path {other}" if other else \
        "no intact checkpoint is beside it"
    return CheckpointError(f"checkpoint {path} {why}; {hint}")


def verify(path: str | Path) -> None:
    """Refuse a local checkpoint that :func:`problem_with` finds fault with (one line naming an intact neighbour)."""
    path = Path(path)
    why = problem_with(path)
    if why is not None:
        raise _refuse(path, why)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Atomic, checksummed checkpoint writes and verified loads (module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if type(get_filesystem(path)).__name__ != "LocalFileSystem":
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, tmp_sum = path.with_name(path.name + ".tmp"), path.with_name(path.name + SUFFIX + ".tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            tmp_sum.write_text(f"{sha256_of(tmp)}  {path.name}\n")
            os.replace(tmp, path)
            os.replace(tmp_sum, checksum_path(path))
        except BaseException:
            tmp.unlink(missing_ok=True)
            tmp_sum.unlink(missing_ok=True)
            raise

    def load_checkpoint(self, path, *args, **kwargs) -> dict[str, Any]:
        if type(get_filesystem(path)).__name__ != "LocalFileSystem":
            return super().load_checkpoint(path, *args, **kwargs)
        path = Path(path)
        verify(path)
        checkpoint = load_weights_only(path, lambda: super(AtomicCheckpointIO, self).load_checkpoint(path, *args,
                                                                                                      **kwargs))
        if not checksum_path(path).is_file():  # nothing vouches for it: its weights at least must be finite
            bad = next((k for k, v in (checkpoint.get("state_dict") or {}).items()
                        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()), None)
            if bad is not None:
                raise _refuse(path, f"has no checksum file and holds non-finite weights ({bad})")
        return checkpoint

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        if type(get_filesystem(path)).__name__ == "LocalFileSystem":
            checksum_path(Path(path)).unlink(missing_ok=True)


def load_weights_only(path: Path, load):
    """``load()`` (a torch load of ``path``), its failures turned into one line naming the file."""
    try:
        return load()
    except pickle.UnpicklingError as err:
        raise _refuse(path, "holds objects other than tensors (a pickle payload), and checkpoints are loaded "
                            "weights-only") from err
    except (OSError, EOFError, RuntimeError, ValueError) as err:  # no checksum file, and torch cannot read it
        raise _refuse(path, f"cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from err
