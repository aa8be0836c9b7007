"""marlrec's Hydra sweeper and launcher: `hydra/sweeper=optuna` (a search over current Optuna that
resumes from its SQLite study) and `hydra/launcher=ray` (multirun jobs on a Ray cluster).

Hydra finds these through its `hydra_plugins` namespace; `marlrec train` also registers them
itself (`register`), so an install that Hydra's scan misses still has them. Optuna and Ray are
imported only when a sweep or launch starts.
"""

from __future__ import annotations

from hydra.core.plugins import Plugins

from hydra_plugins.marlrec_sweeps import config  # noqa: F401  (stores the configs)
from hydra_plugins.marlrec_sweeps.optuna_sweeper import OptunaSweeper
from hydra_plugins.marlrec_sweeps.ray_launcher import RayLauncher

__all__ = ["OptunaSweeper", "RayLauncher", "register"]


def register() -> None:
    """Register the plugins; importing this package stored their configs
    (`hydra/sweeper/optuna`, `hydra/launcher/ray`) in Hydra's ConfigStore."""
    Plugins.instance().register(OptunaSweeper)
    Plugins.instance().register(RayLauncher)
