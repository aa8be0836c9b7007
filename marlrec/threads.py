"""Threads that fit the machine: every marlrec job on it shares the cores it may use.

Two torch processes that each start one thread per core oversubscribe the machine, and small
matrix products then run many times slower than with one thread each. So each job registers
itself in a directory of live jobs, and sizes its torch and BLAS thread pools to its share of
the cores: `cores // live jobs`, at least one. A job re-checks at phase boundaries (after its
setup, before imitation, at every epoch) and every 50 imitation steps, so jobs started together
or one after another settle on their shares.
"""

from __future__ import annotations

import atexit
import logging
import os
import tempfile
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)

REGISTRY_ENV = "MARLREC_JOBS_DIR"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def jobs_dir() -> Path:
    """Where live jobs register: per user, shared by every marlrec process of that user."""
    default = Path(tempfile.gettempdir()) / f"marlrec-jobs-{os.getuid()}"
    return Path(os.environ.get(REGISTRY_ENV, default))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def live_jobs(directory: Path | None = None) -> int:
    """Registered jobs whose process still runs (entries of dead ones are removed)."""
    directory = directory or jobs_dir()
    count = 0
    for entry in directory.glob("*.job"):
        try:
            pid = int(entry.stem)
        except ValueError:
            continue
        if _alive(pid):
            count += 1
        else:
            entry.unlink(missing_ok=True)
    return count


def register_job(directory: Path | None = None) -> None:
    """Count this process among the live jobs until it exits."""
    directory = directory or jobs_dir()
    entry = directory / f"{os.getpid()}.job"
    if entry.exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    entry.touch()
    atexit.register(entry.unlink, missing_ok=True)


def fair_share(requested: int, directory: Path | None = None) -> int:
    """`requested` threads, or with 0 this job's share of the available cores."""
    if requested > 0:
        return requested
    return max(1, available_cores() // max(1, live_jobs(directory)))


def fit_threads(requested: int = 0, directory: Path | None = None) -> int:
    """Size torch's and the BLAS libraries' thread pools; the number of threads set."""
    threads = fair_share(requested, directory)
    if threads != torch.get_num_threads():
        log.info("using %d thread(s) of %d core(s)", threads, available_cores())
        torch.set_num_threads(threads)
    # numpy's BLAS (OpenBLAS or MKL) keeps its own pool: limited to the same share.
    threadpool_limits(limits=threads)
    return threads
