"""Pinned repository snapshots: the run's repository view, the snapshot store, replay."""
