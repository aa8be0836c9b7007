"""The training loop every agent and imitation share: env copies, checkpoints, logs, the loop.

Importing the package lets numba keep Tianshou's compiled helpers on disk (see
`cache_tianshou_jit`).
"""

from __future__ import annotations

import contextlib

from numba.core.dispatcher import Dispatcher
from tianshou.algorithm import algorithm_base
from tianshou.data.buffer import manager as buffer_manager
from tianshou.data.utils import segtree


def cache_tianshou_jit() -> None:
    """Let numba keep Tianshou's JIT-compiled buffer and return helpers on disk.

    Tianshou compiles them in every process, which takes tens of seconds on two CPU cores; with
    numba's cache that happens once per machine. Without a writable cache dir they stay as is.
    """
    for module in (buffer_manager, algorithm_base, segtree):
        for value in vars(module).values():
            if isinstance(value, Dispatcher):
                with contextlib.suppress(RuntimeError):  # no writable cache location
                    value.enable_caching()


cache_tianshou_jit()
