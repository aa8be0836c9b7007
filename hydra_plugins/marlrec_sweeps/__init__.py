"""marlrec's Hydra sweeper and launcher: `hydra/sweeper=optuna` (a search over current Optuna that
resumes from its SQLite study) and `hydra/launcher=ray` (multirun jobs on a Ray cluster).

Hydra finds these through its `hydra_plugins` namespace; `marlrec train` also registers them
itself (`register`), so an install that Hydra's scan misses still has them. Optuna and Ray are
imported only when a sweep or launch starts.
"""

from __future__ import annotations


def register() -> None:
    """Register the plugins with Hydra; importing their modules stores their configs
    (`hydra/sweeper/optuna`, `hydra/launcher/ray`) in Hydra's ConfigStore."""
    from hydra.core.plugins import Plugins

    # Hydra's first use scans (and executes) every module of the namespace: scan first, so the
    # classes registered here are the ones the scan found, not a second copy.
    plugins = Plugins.instance()
    from hydra_plugins.marlrec_sweeps import config  # noqa: F401  (stores the configs)
    from hydra_plugins.marlrec_sweeps.optuna_sweeper import OptunaSweeper
    from hydra_plugins.marlrec_sweeps.ray_launcher import RayLauncher

    plugins.register(OptunaSweeper)
    plugins.register(RayLauncher)
