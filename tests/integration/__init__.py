"""Integration tests: the project's code against real servers started on this machine."""
