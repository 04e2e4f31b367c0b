"""dib-matrix benchmark (run bench/run.py)."""
