"""Adaptive compression on real lab hosts over SSH: a stream that changes zstd level midway
(several zstd frames, the agent reading across them) delivers every byte of the container's
memory; `--compression fixed` never changes level."""

from __future__ import annotations

import json

from conftest import AB
from test_run_fast_restore import _memory_sum, start_holder

# 4 MiB windows: the 48 MiB checkpoint is measured at both levels (one window each at least)
# and goes on at the faster one, so the stream is several frames whichever wins.
SMALL_WINDOWS = {"MIGRATE_ADAPT_WINDOW": str(4 << 20)}


def test_adaptive_stream_changes_level_and_the_memory_arrives(
    ab: AB,
) -> None:
    before = start_holder(ab.docker_a, ab.container_name, ab.test_image)
    p = ab.run("--json", env_extra=SMALL_WINDOWS)
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["bytes"]["fast"] > 0, rep["bytes"]  # at least the measured fast window
    assert rep["bytes"]["fast"] < rep["bytes"]["raw"]  # and the level-1 ones
    assert _memory_sum(ab.docker_b, ab.container_name) == before


def test_fixed_compression_keeps_one_level(
    ab: AB,
) -> None:
    before = start_holder(ab.docker_a, ab.container_name, ab.test_image)
    p = ab.run(
        "--compression",
        "fixed",
        "--json",
        env_extra=SMALL_WINDOWS,
    )
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["bytes"]["fast"] == 0, rep["bytes"]
    assert _memory_sum(ab.docker_b, ab.container_name) == before
