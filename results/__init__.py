"""The results data model (cells, states, artifacts) and its JSON store.

The orchestration writes it and the reports read it; it imports neither.
"""
