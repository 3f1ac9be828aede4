"""Reporting: terminal summary, JSON, CSV, HTML, baselines."""
