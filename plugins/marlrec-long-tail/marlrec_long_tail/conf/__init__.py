"""Hydra config tree of marlrec-long-tail, found through the `marlrec.conf` entry point."""
