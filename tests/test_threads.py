"""Threads that fit the machine: each job takes its share of the cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from marlrec import threads


def test_share_divides_the_cores_among_live_jobs(tmp_path: Path) -> None:
    cores = threads.available_cores()
    threads.register_job(tmp_path)
    assert threads.fair_share(0, tmp_path) == cores
    # A second live job (a real process) beside this one halves the share.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f"{other.pid}.job").touch()
        assert threads.live_jobs(tmp_path) == 2
        assert threads.fair_share(0, tmp_path) == max(1, cores // 2)
    finally:
        other.kill()
        other.wait()
    # A job that ended leaves no claim behind.
    assert threads.live_jobs(tmp_path) == 1
    assert not (tmp_path / f"{other.pid}.job").exists()
    assert threads.fair_share(3, tmp_path) == 3  # asked for explicitly


def test_fit_threads_sizes_torch(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        assert threads.fit_threads(1, tmp_path) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_registering_twice_counts_once(tmp_path: Path) -> None:
    threads.register_job(tmp_path)
    threads.register_job(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f"{os.getpid()}.job"]
