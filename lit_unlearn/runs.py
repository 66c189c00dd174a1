"""What makes a run directory safe to use: one fit at a time, no finished run overwritten silently, a run id shared
by everything the run writes, and signals turned into a resumable stop with an exit code that says so.

Exit codes of ``train.py`` / ``eval.py``:

==== =====================================================================================================
0    finished
2    an error of ours (bad data, config, flag, damaged checkpoint, run directory in use): one line on stderr
3    the run collapsed or diverged: the collapse guard stopped it (weights restored) or its weights are not finite
130  interrupted by SIGINT (Ctrl-C), 143 by SIGTERM (a scheduler's stop): the current step is checkpointed;
     ``--ckpt_path last`` continues
==== =====================================================================================================
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from lit_unlearn.core.errors import LitUnlearnError

EXIT_OK, EXIT_ERROR, EXIT_COLLAPSED = 0, 2, 3
LOCK_NAME = ".lit_unlearn.lock"
#: what a run writes into its directory; a directory holding any of them holds a run
RUN_OUTPUTS = ("metrics.json", "eval_before.json", "adapter", "merged", "rows", "checkpoints")


class RunDirError(LitUnlearnError):
    """A run directory cannot be used as asked (finished run, unfinished run, another fit using it)."""


class RunInterrupted(BaseException):
    """A signal stopped the run at a step boundary (a BaseException, like KeyboardInterrupt: nothing catches it by
    accident on its way out of Lightning's loops)."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        super().__init__(f"{signal.Signals(signum).name} at step {step}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def new_run_id() -> str:
    """A short unique id: time-ordered, then random."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]


class Signals:
    """SIGINT and SIGTERM, caught while a run is in progress: the first one is only noted (:attr:`received`), so the
    training loop can stop at the end of the current step with a checkpoint; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._saved: dict[int, object] = {}

    def _note(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = self.received or signum
        print(f"[lit_unlearn] {signal.Signals(signum).name} received: stopping after the current step with a "
              "checkpoint (Ctrl-C again to stop at once)", flush=True)

    @contextmanager
    def caught(self):
        self.received = None
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield self
            return
        self._saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self._saved:
            signal.signal(s, self._note)
        try:
            yield self
        finally:
            for s, handler in self._saved.items():
                signal.signal(s, handler)
            self._saved = {}


#: the process's signal state, shared by the CLI (which installs it) and the training callback (which acts on it)
SIGNALS = Signals()


class RunDirectory:
    """Claims a run directory for one fit: refuses a directory that holds another run unless it is resumed or
    ``overwrite`` is asked for, and holds a lock file while the fit runs."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = self.path / LOCK_NAME
        self._held = False

    def existing_outputs(self) -> list[str]:
        found = [name for name in RUN_OUTPUTS if (self.path / name).exists()]
        if "checkpoints" in found and not any((self.path / "checkpoints").glob("*.ckpt")):
            found.remove("checkpoints")
        return found

    def claim(self, resume: bool, overwrite: bool) -> None:
        """Take the lock, after checking that this fit may write here (see the class docstring)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            found = self.existing_outputs()
            if found and not resume:
                if overwrite:
                    self._clear()
                else:
                    status = _status(self.path)
                    what = (f"a completed run (status {status})" if status not in (None, "interrupted")
                            else "an unfinished run (resume it with --ckpt_path last)")
                    raise RunDirError(f"{self.path} already holds {what}: {', '.join(found)}; choose another "
                                      "--trainer.logger.init_args.version, or pass --overwrite true to replace it")
        except BaseException:
            self.release()
            raise

    def _clear(self) -> None:
        for entry in self.path.iterdir():
            if entry.name == LOCK_NAME:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        print(f"[lit_unlearn] --overwrite: cleared {self.path}")

    def _take_lock(self) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_json(self.lock)
                if _is_stale(holder):
                    self.lock.unlink(missing_ok=True)  # its process is gone: a crash or kill -9 left it
                    continue
                raise RunDirError(
                    f"{self.path} is in use by another fit (pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} since {holder.get('since', '?')}); wait for it, or delete {self.lock} "
                    "if that process is gone") from None
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self._held = True
            return
        raise RunDirError(f"could not take the lock {self.lock}")

    def release(self) -> None:
        if self._held:
            self.lock.unlink(missing_ok=True)
            self._held = False


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _status(run_dir: Path) -> str | None:
    """The status its metrics.json records (runs from before statuses were recorded: finished), None without one."""
    if not (run_dir / "metrics.json").is_file():
        return None
    return _read_json(run_dir / "metrics.json").get("status", "finished")


def _is_stale(holder: dict) -> bool:
    """A lock whose process is gone (same host, pid not running) or that is unreadable (a half-written lock)."""
    if not holder:
        return True
    if holder.get("host") != socket.gethostname():
        return False  # another machine: cannot tell, assume it is alive
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


def stamp_config(path: Path, run_id: str) -> None:
    """Put the run id at the top of a saved ``config.yaml`` as a comment (the file still re-runs as a config)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines(keepends=True) if not line.startswith("# lit_unlearn run ")]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"# lit_unlearn run {run_id}\n" + "".join(lines))
    os.replace(tmp, path)
