"""Integration tests: real brokers on port 0 driven by real clients.

Run with ``python -m twisted.trial tests`` from the repository root (the root
must be importable so that ``tests.support`` and this checkout's ``vmqtw`` and
``twisted/plugins`` are found; child processes get it on PYTHONPATH).
"""
