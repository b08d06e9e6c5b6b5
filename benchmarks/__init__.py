"""Benchmarks of lightning-sparsity against its peers (run as ``python -m benchmarks.<script>``)."""
