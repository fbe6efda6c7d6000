"""Volumes, networks and images: the daemon's objects other than containers, as the engine
interface describes them (engines/base.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import docker
import docker.errors

from migrate.core.errors import EngineError
from migrate.engines.base import ImageInfo, NetworkInfo, VolumeInfo
from migrate.engines.docker.images import filter_save_stream


class DockerObjects:
    """The part of DockerEngine that manages volumes, networks and images (a base class so
    that engine.py keeps to containers, checkpoints and restores)."""

    api: Any  # docker.APIClient (docker-py ships no type information)

    # --- volumes --------------------------------------------------------------------------

    def volume_exists(self, name: str) -> bool:
        try:
            self.api.inspect_volume(name)
            return True
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as e:
            raise EngineError(f"docker volume inspect {name}: {e.explanation or e}") from None

    def remove_volume(self, name: str) -> None:
        try:
            self.api.remove_volume(name, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            raise EngineError(f"docker volume rm {name}: {e.explanation or e}") from None

    def volume(self, name: str) -> VolumeInfo | None:
        try:
            v = self.api.inspect_volume(name)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as e:
            raise EngineError(f"docker volume inspect {name}: {e.explanation or e}") from None
        return VolumeInfo(
            name=str(v.get("Name", name)),
            driver=str(v.get("Driver", "")),
            options={str(k): str(x) for k, x in (v.get("Options") or {}).items()},
            labels={str(k): str(x) for k, x in (v.get("Labels") or {}).items()},
            mountpoint=str(v.get("Mountpoint", "")),
        )

    def create_volume(self, vol: VolumeInfo) -> VolumeInfo:
        try:
            self.api.create_volume(
                vol.name,
                driver=vol.driver or "local",
                driver_opts=dict(vol.options) or None,
                labels=dict(vol.labels) or None,
            )
        except docker.errors.APIError as e:
            raise EngineError(f"docker volume create {vol.name}: {e.explanation or e}") from None
        made = self.volume(vol.name)
        if made is None:
            raise EngineError(f"docker volume create {vol.name}: the volume is missing after it")
        return made

    # --- networks -------------------------------------------------------------------------

    def _user_subnet(self, name: str) -> bool:
        """Docker accepts a fixed address only on a network with a configured subnet."""
        try:
            n = self.api.inspect_network(name)
        except docker.errors.APIError:
            return False
        return bool((n.get("IPAM") or {}).get("Config"))

    def network(self, name: str) -> NetworkInfo | None:
        try:
            n = self.api.inspect_network(name)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as e:
            raise EngineError(f"docker network inspect {name}: {e.explanation or e}") from None
        ipam = dict(n.get("IPAM") or {})
        raw = {
            "Driver": n.get("Driver", "bridge"),
            "Options": dict(n.get("Options") or {}),
            "Labels": dict(n.get("Labels") or {}),
            "IPAM": {
                "Driver": ipam.get("Driver") or "default",
                "Config": list(ipam.get("Config") or []),
                "Options": dict(ipam.get("Options") or {}),
            },
            "Internal": bool(n.get("Internal")),
            "Attachable": bool(n.get("Attachable")),
            "EnableIPv6": bool(n.get("EnableIPv6")),
        }
        return NetworkInfo(name=str(n.get("Name", name)), driver=str(raw["Driver"]), raw=raw)

    def create_network(self, net: NetworkInfo) -> None:
        raw = dict(net.raw)
        try:
            self.api.create_network(
                net.name,
                driver=net.driver,
                options=raw.get("Options") or None,
                ipam=raw.get("IPAM") or None,
                internal=bool(raw.get("Internal")),
                labels=raw.get("Labels") or None,
                enable_ipv6=bool(raw.get("EnableIPv6")),
                attachable=bool(raw.get("Attachable")),
                check_duplicate=True,
            )
        except docker.errors.APIError as e:
            raise EngineError(f"docker network create {net.name}: {e.explanation or e}") from None

    def remove_network(self, name: str) -> None:
        try:
            self.api.remove_network(name)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            raise EngineError(f"docker network rm {name}: {e.explanation or e}") from None

    # --- images ---------------------------------------------------------------------------

    def remove_image(self, ref: str) -> bool:
        """Remove an image unless a container still uses it. True if it was removed."""
        try:
            self.api.remove_image(ref, force=False, noprune=False)
            return True
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as e:
            if e.status_code == 409:  # in use by a container: keep it
                return False
            raise EngineError(f"docker rmi {ref}: {e.explanation or e}") from None

    def image(self, ref: str) -> ImageInfo | None:
        try:
            i = self.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as e:
            if e.status_code == 404:
                return None
            raise EngineError(f"docker image inspect {ref}: {e.explanation or e}") from None
        return ImageInfo(
            id=str(i["Id"]),
            repo_tags=tuple(i.get("RepoTags") or ()),
            diff_ids=tuple((i.get("RootFS") or {}).get("Layers") or ()),
            size=int(i.get("Size") or 0),
        )

    def layers_present(self) -> set[str]:
        have: set[str] = set()
        for img in self.api.images(all=True):
            info = self.image(img["Id"])
            if info:
                have.update(info.diff_ids)
        return have

    def save_image(self, refs: Iterable[str]) -> Iterator[bytes]:
        names = list(refs)
        try:
            res = self.api._get(self.api._url("/images/get"), params={"names": names}, stream=True)
            self.api._raise_for_status(res)
        except docker.errors.APIError as e:
            raise EngineError(f"docker save {names}: {e.explanation or e}") from None
        yield from res.iter_content(chunk_size=1 << 20)

    def save_missing_layers(
        self, refs: Iterable[str], present: set[str], stats: dict[str, int] | None = None
    ) -> Iterator[bytes]:
        """`docker save` of ``refs`` with the layers in ``present`` emptied (images.py)."""
        return filter_save_stream(self.save_image(refs), present, stats)

    def load_image(self, chunks: Iterable[bytes]) -> None:
        try:
            for msg in self.api.load_image(chunks):
                if isinstance(msg, dict) and msg.get("error"):
                    raise EngineError(f"docker load: {msg['error']}")
        except docker.errors.APIError as e:
            raise EngineError(f"docker load: {e.explanation or e}") from None
