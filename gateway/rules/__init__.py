"""The rules: pure functions and values, no I/O (guarded by tests/test_layers.py)."""
