"""The memory-or-disk decision for checkpoint staging (migrate/checkpoint/staging.py): pure logic."""

from pathlib import Path

import pytest

from migrate.checkpoint import staging

pytestmark = pytest.mark.unit

GiB = 1 << 30
MiB = 1 << 20


def test_fits_in_memory() -> None:
    c = staging.decide("auto", 256 * MiB, tmpfs_free=10 * GiB, available=10 * GiB)
    assert c.memory and c.label == "memory"


def test_disk_mode_never_uses_memory() -> None:
    c = staging.decide("disk", 1 * MiB, tmpfs_free=10 * GiB, available=10 * GiB)
    assert not c.memory and "--staging disk" in c.reason


def test_no_tmpfs_means_disk() -> None:
    c = staging.decide("auto", 1 * MiB, tmpfs_free=0, available=10 * GiB)
    assert not c.memory and "no tmpfs" in c.reason


def test_tmpfs_too_small_means_disk() -> None:
    # 1 GiB with 25 % growth and the reserve does not fit in 1.2 GiB of tmpfs.
    c = staging.decide("auto", 1 * GiB, tmpfs_free=int(1.2 * GiB), available=10 * GiB)
    assert not c.memory and "tmpfs has" in c.reason


def test_host_memory_counts_every_copy() -> None:
    # Fits once (source: the frozen container holds it), not twice (destination: the
    # restored copy fills while the images are still staged).
    args = dict(tmpfs_free=10 * GiB, available=int(2.2 * GiB))
    assert staging.decide("auto", 1 * GiB, copies=1, **args).memory  # type: ignore[arg-type]
    c = staging.decide("auto", 1 * GiB, copies=2, **args)  # type: ignore[arg-type]
    assert not c.memory and "memory available" in c.reason


def test_unknown_mode_rejected() -> None:
    with pytest.raises(ValueError):
        staging.decide("ram", 0, tmpfs_free=GiB, available=GiB)


def test_dev_shm_is_seen_as_tmpfs_and_a_disk_path_is_not(tmp_path: Path) -> None:
    assert staging.tmpfs_free(Path("/dev/shm/migrate-not-yet-created/x")) > 0
    disk = Path("/var/lib")
    assert staging.tmpfs_free(disk) == 0
    assert staging.mem_available() > 0


def test_check_row_for_memory_staging() -> None:
    from migrate.source.host_checks import check_memory_staging

    ok = check_memory_staging(10 * GiB, 4 * GiB)
    assert ok.ok and "staged in memory" in ok.value
    none = check_memory_staging(0, 4 * GiB)
    assert not none.ok and not none.required and "MIGRATE_MEMORY_STAGING" in (none.fix or "")
