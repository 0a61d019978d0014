"""A low-cost SMTP capture server for demos, tests and benchmarks."""
