"""edgeopt's benchmarks (not collected by pytest): ``python -m benchmarks``."""
