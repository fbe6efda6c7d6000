"""How long the source waits for each step of a migration (one place for the phases' limits)."""

from __future__ import annotations

CALL_TIMEOUT_S = 60.0
# Restoring goes through containerd's content store: seconds per GB of memory.
RESTORE_TIMEOUT_S = 600.0
IMAGE_TIMEOUT_S = 1800.0
# Post-copy: how long the destination may take to pull every page, and how long the source's
# page server may take to exit after the last one.
POSTCOPY_TIMEOUT_S = 1800.0
PAGE_SERVER_EXIT_S = 60.0
# How long a rollback keeps trying to reach the agent to delete what it made.
ABORT_RETRY_S = 45.0
# How long a rollback waits for an interrupted CRIU dump to end before resuming the source.
DUMP_WAIT_S = 120.0
# The last call, after `committed` (nothing depends on its answer).
BYE_TIMEOUT_S = 5.0
