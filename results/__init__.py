"""The results of runs: the data model (``model``), results.json written (``store``) and
read back checked (``reader``), and the archive (``archive``), the one owner of the
output directory and of a run directory's layout.

The orchestration writes them and the reports read them; this package imports neither.
"""
