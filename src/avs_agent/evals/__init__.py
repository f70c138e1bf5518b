"""Evals: dataset loaders, official metrics, strategies, runner, reports."""
