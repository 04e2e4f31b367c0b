"""The run registry's storage: shared by runs, emptied past its budget only when alone."""

from __future__ import annotations

import fcntl

from matrix.containers import registry


def filled(tmp_path, size):
    storage = tmp_path / "storage"
    (storage / "blobs").mkdir(parents=True)
    (storage / "blobs" / "data").write_bytes(b"x" * size)
    return storage


def test_a_storage_within_budget_is_kept(tmp_path):
    storage = filled(tmp_path, 100)
    with registry._storage_lease(storage, budget=1000):
        assert (storage / "blobs" / "data").exists()


def test_a_storage_over_budget_is_emptied_when_no_other_run_uses_it(tmp_path):
    storage = filled(tmp_path, 2000)
    with registry._storage_lease(storage, budget=1000):
        assert storage.is_dir() and not any(storage.iterdir())


def test_a_storage_another_run_serves_from_is_never_emptied(tmp_path):
    storage = filled(tmp_path, 2000)
    with registry._storage_lease(storage, budget=10_000), \
            registry._storage_lease(storage, budget=0):
        assert (storage / "blobs" / "data").exists()


def test_the_lease_is_shared_while_the_registry_runs(tmp_path):
    storage = filled(tmp_path, 10)
    with registry._storage_lease(storage, budget=1000), \
            open(tmp_path / "storage.lock", "a") as other:
        fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)  # another run may share it
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            raise AssertionError("an exclusive hold was granted while a registry runs")
        except BlockingIOError:
            pass


def test_clean_empties_the_storage_unless_a_registry_serves_from_it(tmp_path):
    storage = filled(tmp_path, 2 << 20)
    with registry._storage_lease(storage, budget=10 << 20):
        assert "kept" in registry.empty_storage(storage)
        assert (storage / "blobs" / "data").exists()
    assert registry.empty_storage(storage) == \
        f"removed the run registry's storage {storage} (2 MiB)"
    assert not storage.exists()
    assert registry.empty_storage(storage) == ""  # nothing there: nothing said
