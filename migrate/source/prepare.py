"""The destination made ready while the container still runs: the image layers it lacks, then
the new container created from the same configuration (journalled `prepared`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from migrate.core.errors import MigrateError
from migrate.engines.base import ContainerSpec
from migrate.source.limits import IMAGE_TIMEOUT_S
from migrate.source.mounts import binds_wire
from migrate.wire.methods import ImageStatus, LoadImage, Prepare

if TYPE_CHECKING:
    from migrate.source.migration import Migration

log = logging.getLogger(__name__)


def transfer_image(m: Migration, spec: ContainerSpec) -> None:
    assert m.agent is not None
    with m.timer.phase("image", "image layers"):
        img = m.engine.image(spec.image_id)
        if img is None:
            raise MigrateError(f"the image of {spec.name} ({spec.image_id[:19]}) is gone")
        status = m.agent.call(ImageStatus(image_id=img.id, diff_ids=list(img.diff_ids))).result
        if status.image_present:
            return
        have = set(status.layers_present)
        refs = [spec.image_ref] if spec.image_ref in img.repo_tags else []
        refs = refs or list(img.repo_tags[:1]) or [img.id]
        stats: dict[str, int] = {}
        stream = m.engine.save_missing_layers(refs, have, stats)
        res = m.agent.call(
            LoadImage(image_id=img.id),
            stream=stream,
            timeout=IMAGE_TIMEOUT_S,
            on_progress=lambda raw, wire: m.progress.transfer("image", raw, wire, None),
        )
        m.count("image", res.stream)
        log.info(
            "image: %s layers sent, %s skipped",
            stats.get("layers_sent"),
            stats.get("layers_skipped"),
        )


def prepare(m: Migration, spec: ContainerSpec) -> None:
    assert m.agent is not None
    with m.timer.phase("create", "creating the container on the destination"):
        m.dest_created = True  # from here on the agent may have made something
        res = m.agent.call(
            Prepare(
                migration_id=m.id,
                spec=spec.to_wire(),
                name=m.dest_name,
                volumes=[v.to_wire() for v in m.volumes],
                binds=binds_wire(m.binds, m.opts.bind_mounts),
                networks=[n.to_wire() for n in m.networks],
            )
        ).result
        m.dest_container_id = res.container_id
        m.journal.append("prepared", dest_container_id=m.dest_container_id)
