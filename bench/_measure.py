"""Wall time and peak memory of a block of code, counting child processes (sampled every 0.1 s)."""

from __future__ import annotations

import os
import platform
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_rss_bytes: int = 0
    samples: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def peak_gib(self) -> float:
        return self.peak_rss_bytes / 2**30


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


@contextmanager
def measure(interval: float = 0.1):
    """``with measure() as m: ...`` then ``m.seconds``, ``m.peak_gib`` (this process and its children)."""
    m = Measurement()
    proc = psutil.Process(os.getpid())
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            m.peak_rss_bytes = max(m.peak_rss_bytes, _tree_rss(proc))
            m.samples += 1
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        yield m
    finally:
        m.seconds = time.perf_counter() - start
        stop.set()
        thread.join()
        m.peak_rss_bytes = max(m.peak_rss_bytes, _tree_rss(proc))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return f"{cpu}, {psutil.cpu_count()} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}"
