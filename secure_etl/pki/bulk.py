"""Renew many certificates at once: threads, and past a few dozen, a process per CPU.

Issuing from the internal CA is Python work (building, signing, verifying, the audit
records) under one interpreter lock, so a thousand certificates in threads use one core
however many threads there are. Past ``MIN_PER_PROCESS`` certificates a process, the
names are spread over forked worker processes (one per CPU the process may run on), each
with its own threads. Every certificate is still renewed by ``ensure_certificate`` under
its own file lock; the audit log and the store already serve several processes.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor

from secure_etl.config import PlatformConfig
from secure_etl.pki.renewal import RenewalResult, ensure_certificate

# Fewer certificates than this for each process and forking would cost more than it saves.
MIN_PER_PROCESS = 32

Outcome = tuple[str, RenewalResult | None, str | None]  # name, result, or why it failed


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_processes(certificates: int, jobs: int, cpus: int | None = None) -> int:
    """How many processes share ``certificates`` renewed ``jobs`` at once (1: this one).

    Only a process with no other thread forks: a thread holding a lock (logging's, say)
    as the fork happens would leave it held forever in the child."""
    if "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
        return 1
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, min(cpus, jobs, certificates // MIN_PER_PROCESS))


def renew_many(
    config: PlatformConfig, names: Sequence[str], *, force: bool = False, jobs: int = 8
) -> Iterator[Outcome]:
    """Renew ``names`` (``jobs`` at once), yielding each outcome in the order of ``names``.

    One certificate's failure is its outcome's reason and does not stop the others; a
    worker process that dies fails the certificates it had not reported."""
    processes = worker_processes(len(names), jobs)
    if processes == 1:
        here = ThreadPoolExecutor(max_workers=jobs)
        try:
            yield from _renew_in(here, config, names, force)
        finally:  # interrupted (Ctrl-C): finish the renewals under way, start no more
            here.shutdown(cancel_futures=True)
        return
    threads = jobs // processes  # never more than ``jobs`` at once (processes <= jobs)
    # Chunks small enough that every process stays busy to the end, and the caller sees
    # progress; in order, so the outcomes come back in the order of ``names``.
    size = max(1, min(threads * 4, math.ceil(len(names) / processes)))
    chunks = [list(names[i : i + size]) for i in range(0, len(names), size)]
    done = 0
    # A child flushes its copy of this process's buffers as it exits: empty them first,
    # or what was printed but not yet written would be written again by each worker.
    sys.stdout.flush()
    sys.stderr.flush()
    # fork: the children start with the config loaded and its modules imported. All of
    # them are forked before the pool starts its thread (and this process had none).
    pool = ProcessPoolExecutor(
        max_workers=processes,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_start_worker,
        initargs=(config, force, threads),
    )
    try:
        for outcomes in pool.map(_renew_chunk, chunks):
            done += len(outcomes)
            yield from outcomes
    except BrokenProcessPool as err:
        why = f"its worker process died before reporting ({err})"
        for name in names[done:]:
            yield name, None, why
    finally:
        pool.shutdown(cancel_futures=True)


def _renew_in(
    pool: ThreadPoolExecutor, config: PlatformConfig, names: Sequence[str], force: bool
) -> Iterator[Outcome]:
    """``names`` renewed in ``pool``'s threads, their outcomes in order."""

    def renew(name: str) -> Outcome:
        try:
            return name, ensure_certificate(config, name, force=force), None
        except Exception as err:  # one failure must not stop the others
            return name, None, str(err)

    return pool.map(renew, names)


# A worker process's config and threads, set once as it starts.
_WORKER: tuple[PlatformConfig, bool, ThreadPoolExecutor] | None = None


def _start_worker(config: PlatformConfig, force: bool, threads: int) -> None:
    global _WORKER
    _WORKER = (config, force, ThreadPoolExecutor(max_workers=threads))


def _renew_chunk(names: list[str]) -> list[Outcome]:
    assert _WORKER is not None, "_start_worker runs first in every worker process"
    config, force, pool = _WORKER
    return list(_renew_in(pool, config, names, force))
