"""mailfleet benchmarks: each prints one JSON line of figures."""
