"""Evaluation: ranking on held-out interactions and simulated sessions, one harness for all."""
