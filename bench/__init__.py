"""Benchmarks run by `make bench`; each module's `main()` prints a ratio against a named baseline."""
