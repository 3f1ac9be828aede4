"""Repository root: `pytest .` runs the tests and the examples, never the benchmark scripts
(they are programs that print figures, see benchmarks/README.md)."""

collect_ignore_glob = ["benchmarks/*"]
