"""Measurement: the per-run record (``Run``), the step timer, peak memory (CUDA ``max_memory_allocated`` / sampled
CPU RSS) and the exact per-step tensor-memory peak from the profiler (``StepMemory``)."""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class Run:
    system: str  # a | b | lit
    method: str  # lit/b: the method; a: "CE"
    tokens_per_step: int
    step_s: list[float] = field(default_factory=list)  # timed steps (after warm-up)
    loop_s: float = 0.0  # from the end of the last warm-up step to the end of the last step
    first_loss: float | None = None
    peak_bytes: int = 0
    step_peak_bytes: int | None = None  # CPU: exact peak of tensors allocated during one step (StepMemory)
    setup_s: float = 0.0
    round: int = 0


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:  # give freed heap pages back to the OS so the next system's RSS baseline is honest
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


try:
    import psutil

    _PROC = psutil.Process()
except ImportError:  # fall back to /proc/self/statm (resident pages)
    _PROC = None


def _rss_bytes() -> int:
    if _PROC is not None:
        return _PROC.memory_info().rss
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """CUDA: peak ``max_memory_allocated`` (weights + activations + optimizer). CPU: peak RSS increase over the
    baseline at entry, sampled every 5 ms by a thread (approximate: allocator reuse and sampling can hide peaks)."""

    def __init__(self, device: str):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self):
        free_memory()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = 0
        else:
            self.base = self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def freeze(self) -> None:
        """Take the value now (before the memory-profiled step, whose profiler buffers would count otherwise)."""
        if hasattr(self, "value"):
            return
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.value = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())
            self.value = self.peak - self.base

    def __exit__(self, *exc):
        self.freeze()
        return False


class StepMemory:
    """CPU: the exact peak, during one training step, of the bytes of tensors allocated in that step and still alive
    (activations, gradients, temporaries, optimizer updates), from the PyTorch profiler's memory timeline
    (``profile_memory`` + ``record_shapes`` + ``with_stack``; a private torch API, so failures give None). Tensors
    alive before the step (weights, optimizer state) are not counted, so the systems compare on what the step
    itself needs. The profiled step is slow and is not timed."""

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                            with_stack=True)
        self.prof.start()

    def stop(self) -> int | None:
        self.prof.stop()
        try:
            from torch.profiler._memory_profiler import Action

            live, cur, peak = {}, 0, 0
            for _, action, (key, _version), size in self.prof._memory_profile().timeline:
                if action == Action.CREATE:
                    live[key] = size
                    cur += size
                elif action == Action.DESTROY and key in live:
                    cur -= live.pop(key)
                peak = max(peak, cur)
            return peak
        except Exception as e:  # noqa: BLE001 - a private API: report, do not fail the benchmark
            print(f"[bench] step memory unavailable: {e!r}", file=sys.stderr)
            return None


def total_steps(args) -> int:
    """Warm-up + timed steps, plus the untimed memory-profiled step (CPU) at the end."""
    return args.warmup + args.steps + (1 if args.step_memory else 0)


class Timer:
    """Shared bookkeeping for the three systems' step hooks; profiles the memory of the step after the timed ones."""

    def __init__(self, args):
        self.device, self.warmup = args.device, args.warmup
        self.probe_at = args.warmup + args.steps if args.step_memory else None
        self.times: list[float] = []
        self.ends: list[float] = []
        self.t0 = 0.0
        self.probe: StepMemory | None = None
        self.step_peak: int | None = None
        self.mem: PeakMemory | None = None  # frozen before the profiled step

    def start(self):
        sync(self.device)
        if len(self.times) == self.probe_at:
            if self.mem is not None:
                self.mem.freeze()
            self.probe = StepMemory()
            self.probe.start()
        self.t0 = time.perf_counter()

    def stop(self):
        sync(self.device)
        t = time.perf_counter()
        if self.probe is not None:
            self.step_peak, self.probe = self.probe.stop(), None
            return
        self.times.append(t - self.t0)
        self.ends.append(t)

    def fill(self, run: Run) -> None:
        run.step_s = self.times[self.warmup:]
        run.step_peak_bytes = self.step_peak
        if len(self.ends) > self.warmup:
            first = self.ends[self.warmup - 1] if self.warmup > 0 else self.ends[0] - self.times[0]
            run.loop_s = self.ends[-1] - first


@contextmanager
def measured(args, run: Run):
    """Peak memory around the block (from before the model is built) and a ``Timer`` for the system's step hooks;
    on exit both are written into ``run``. Everything the system built is to be deleted inside the block."""
    timer = Timer(args)
    with PeakMemory(args.device) as mem:
        timer.mem = mem
        yield timer
    run.peak_bytes = mem.value
    timer.fill(run)
