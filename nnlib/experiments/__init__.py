"""Experiment tools over runs: sweeps, the split search, plots, reports and tracking."""
