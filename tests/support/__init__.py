"""Helpers shared by test modules (no test module imports another; see test_layout)."""
