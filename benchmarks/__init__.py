"""Benchmarks: scripts run as `python benchmarks/NAME.py`; a package so that tests import
its helpers before any installed package of the same name (Opacus ships one)."""
