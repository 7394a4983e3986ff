"""Benchmarks of the gateway. `python bench/ingest.py --help` runs the ingest benchmark."""
