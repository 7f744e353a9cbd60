"""Experiments: reproduce the paper's table, archive the result files, build RESULTS.md, publish models."""
