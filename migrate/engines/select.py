"""The one place that chooses the container engine: the CLI opens it here and hands it (or a
factory of it) to the source and the agent, which see only engines/base.py."""

from __future__ import annotations

from migrate.engines.base import Engine, EngineReadiness

# How long a check waits for the daemon: a check reports an unreachable daemon, it does not
# wait for it as a migration does.
CHECK_TIMEOUT_S = 15


def open_engine(docker_host: str | None = None, *, timeout: int | None = None) -> Engine:
    """The engine of this host: Docker at ``docker_host`` (default: DOCKER_HOST or its
    default socket). ``timeout``: seconds each API call may take (default: the engine's)."""
    # Imported here: the CLI's other commands (lab, help) must not need docker-py.
    from migrate.engines.docker.engine import DockerEngine

    if timeout is None:
        return DockerEngine(docker_host)
    return DockerEngine(docker_host, timeout=timeout)


def open_readiness() -> EngineReadiness:
    """How `migrate check` judges this host's daemon and a destination's (same kind)."""
    from migrate.engines.docker.readiness import DockerReadiness

    return DockerReadiness()
