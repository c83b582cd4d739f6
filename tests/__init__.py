"""Test suite of the Sidekick testbed (importable so that shared strategies can be reused)."""
