"""One module per KMS provider that starts its real test server (see ``../harness.py``)."""
