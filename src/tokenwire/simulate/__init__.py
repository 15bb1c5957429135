"""Simulated model provider: deterministic replies at the seeds' measured speeds."""
