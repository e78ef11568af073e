"""Freed memory goes back to the OS after bursts (service/memory.py, docs/reliability.md "Freed
memory goes back to the OS after bursts"). The heap state that a burst of large messages leaves behind (glibc's raised
mmap threshold, freed blocks below a live one) is built deterministically with ctypes in a fresh
process, so the test does not depend on how a burst happens to be laid out."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.metrics import metric, scrape

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import ctypes, sys
from service.memory import MemoryTrimmer, rss_bytes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: where glibc's dynamic threshold ends after large frees
libc.mallopt(-1, 1 << 30)   # M_TRIM_THRESHOLD: free() alone never gives the heap top back
trimmer = MemoryTrimmer(threshold_mb=int(sys.argv[1]))
trimmer.baseline = rss_bytes()
blocks = [libc.malloc(1 << 20) for _ in range(100)]
for block in blocks:
    ctypes.memset(block, 1, 1 << 20)
pinned = libc.malloc(1024)  # a live block above them: the freed pages sit inside the heap
for block in blocks:
    libc.free(block)
held = rss_bytes() - trimmer.baseline
released = trimmer.trim_if_above()
print(held >> 20, released >> 20, (rss_bytes() - trimmer.baseline) >> 20)
"""


def run_probe(threshold_mb: int) -> tuple[int, int, int]:
    result = subprocess.run([sys.executable, "-c", PROBE, str(threshold_mb)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    held, released, after = (int(x) for x in result.stdout.split())
    return held, released, after


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_freed_heap_memory_is_returned_when_rss_is_over_the_threshold() -> None:
    held, released, after = run_probe(threshold_mb=32)
    assert held >= 90, "the freed blocks stay resident without a trim (the state the trimmer exists for)"
    assert released >= 90 and after <= 10


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_nothing_is_trimmed_below_the_threshold() -> None:
    held, released, after = run_probe(threshold_mb=512)
    assert held >= 90 and released == 0 and after >= 90


ARENA_PROBE = r"""
import ctypes, os, sys, threading
from service.memory import limit_malloc_arenas
os.environ.pop("MALLOC_ARENA_MAX", None)
print(limit_malloc_arenas(int(sys.argv[1])), flush=True)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
start = threading.Barrier(8)
def allocate():  # a new thread's first malloc takes a new arena while glibc's cap allows
    start.wait()
    libc.free(libc.malloc(4096))
threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc.malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def count_arenas(cap: int) -> tuple[str, int]:
    result = subprocess.run([sys.executable, "-c", ARENA_PROBE, str(cap)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True, env={"PATH": "/usr/bin:/bin"})
    return result.stdout.strip(), sum(line.startswith("Arena ") for line in result.stderr.splitlines())


def test_malloc_arenas_are_capped_at_start() -> None:
    assert count_arenas(0)[1] >= 4, "glibc gives new threads their own arenas (the state the cap exists for)"
    was_set, arenas = count_arenas(2)
    assert was_set == "True" and 1 <= arenas <= 2


def test_the_server_runs_one_trimmer_thread_and_counts_what_it_returns(start_server, bundles) -> None:
    server = start_server(memory_trim_mb=64)
    trimmer = server.app.memory_trimmer
    assert [t.name for t in threading.enumerate()].count("memory-trim") == 1
    assert trimmer.baseline > 0
    trimmer.baseline -= 10 << 30  # pretend the server started 10 GB smaller: the next check trims
    released = trimmer.trim_if_above()
    assert trimmer.trims == 1
    assert metric(scrape(server.metrics_url), "textclf_memory_trimmed_bytes_total") == released
    off = start_server(memory_trim_mb=0)
    assert off.app.memory_trimmer._thread is None
