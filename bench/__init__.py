"""Bench: real skip rates and latency on every runtime (`cg-bench`, `cg-demo`)."""
