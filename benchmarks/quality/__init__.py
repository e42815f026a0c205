"""The quality benchmark suite: see README.md here; run with `python -m benchmarks.quality.run --help`."""
