"""Giving freed memory back to the operating system after bursts of large messages.

A 4 MiB request is copied a few times on its way in (gRPC core, Python bytes, protobuf strings).
glibc serves such blocks from its heaps once its dynamic mmap threshold has risen, and keeps the
freed pages: after a burst of large requests the process's RSS stays hundreds of MB above its idle
value although nothing holds that memory. ``MemoryTrimmer`` checks the RSS once a second from its
own thread and, when it is more than ``threshold_mb`` above the RSS the server had when it
started serving, calls glibc's ``malloc_trim(0)``, which returns the free pages of every heap
(docs/reliability.md, "Freed memory goes back to the OS after bursts"). It never touches live memory, so answers are
unaffected; on a C library without ``malloc_trim`` (musl) it logs once and does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """This process's resident set size (``/proc/self/statm``: no allocation of note, no syscall storm)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE


# Allocations between young-generation collections (CPython's default 700): a call allocates a
# few hundred tracked objects, so the default collects every few calls; 10,000 gave +4 % and +9 %
# short-text req/s at c=64 in two interleaved pairs, inside this host's noise (docs/benchmarks.md
# "Session 5: GC freeze, batch token cap, request-bytes budget").
YOUNG_COLLECTION_THRESHOLD = 10_000


def freeze_startup_objects() -> int:
    """Move every object alive once the server is serving (models, tokenizers, gRPC and protobuf
    machinery: ~53k tracked objects) out of the cyclic garbage collector's reach (``gc.freeze``).
    A full collection then looks only at what requests allocate: 0.01 ms instead of 26-40 ms, and
    under load full collections would otherwise stall the event loop that often
    (docs/benchmarks.md "Session 5: GC freeze, batch token cap, request-bytes budget"). Called once by the server process's entry point, not
    by embedders (frozen objects are never collected, so a process that starts and stops many
    servers would keep their cycles). Also raises the young-generation threshold
    (``YOUNG_COLLECTION_THRESHOLD``). Returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
    return gc.get_freeze_count()


def _libc_function(name: str, argtypes: list[type], restype: type) -> Callable[..., int] | None:
    """``name`` from the C library, typed; None where it has none (e.g. musl has no ``malloc_trim``).
    ctypes releases the GIL while it runs."""
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, restype
    return function


def _load_malloc_trim() -> Callable[[int], int] | None:
    return _libc_function("malloc_trim", [ctypes.c_size_t], ctypes.c_int)


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def limit_malloc_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas (``mallopt(M_ARENA_MAX)``; call before the server's threads start).
    glibc gives each new thread its own arena, up to 8 per core; large request buffers freed in one
    arena while small objects of other threads stay live in it leave pages ``malloc_trim`` cannot
    return. With 2 arenas the RSS 10 s after the hostile benchmark was +76/+81/+87 MB instead of
    +129/+153 MB (docs/reliability.md "Fifth pass"). A ``MALLOC_ARENA_MAX`` in the environment wins;
    0 or a C library without ``mallopt`` (musl): glibc's default. Returns whether the cap was set."""
    if count <= 0 or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    mallopt = _libc_function("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)
    if mallopt is None:
        logger.info("mallopt is not available in this C library: malloc arenas are not capped")
        return False
    return bool(mallopt(M_ARENA_MAX, count))


class MemoryTrimmer:
    """One daemon thread, started with the server (so the thread count never changes under load)."""

    def __init__(self, threshold_mb: int, interval: float = 1.0, on_trim: Callable[[int], None] | None = None) -> None:
        self.threshold = threshold_mb * 1024 * 1024
        self.interval = interval
        self.on_trim = on_trim  # called with the bytes returned (metrics)
        self._trim = _load_malloc_trim() if threshold_mb > 0 else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline = 0
        self.trims = 0

    def start(self) -> None:
        if self.threshold <= 0:
            return
        if self._trim is None:
            logger.info("malloc_trim is not available in this C library: memory is not trimmed after bursts")
            return
        self.baseline = rss_bytes()
        self._thread = threading.Thread(target=self._run, name="memory-trim", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def trim_if_above(self) -> int:
        """Trim when the RSS is over the baseline by more than the threshold; the bytes returned."""
        before = rss_bytes()
        if before - self.baseline <= self.threshold or self._trim is None:
            return 0
        self._trim(0)
        released = max(0, before - rss_bytes())
        self.trims += 1
        logger.debug("malloc_trim returned %.1f MB (RSS %.1f MB over its start)", released / 2**20,
                     (before - self.baseline) / 2**20)
        if self.on_trim is not None:
            self.on_trim(released)
        return released

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.trim_if_above()
            except Exception:  # never let the trimmer take the process down
                logger.exception("memory trim failed")
                return
