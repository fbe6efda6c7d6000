"""Filtering a `docker save` stream down to the layers the destination lacks."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

from migrate.engines.docker.images import filter_save_stream


def _save_tar(layers: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in layers.items():
            ti = tarfile.TarInfo(f"{name}/layer.tar")
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("manifest.json")
        body = b'[{"Layers": []}]'
        ti.size = len(body)
        t.addfile(ti, io.BytesIO(body))
    return buf.getvalue()


def _chunks(data: bytes, n: int = 7000) -> list[bytes]:
    return [data[i : i + n] for i in range(0, len(data), n)]


def test_layers_the_destination_has_are_emptied() -> None:
    base, top = os.urandom(50_000), os.urandom(30_000)
    src = _save_tar({"aaa": base, "bbb": top})
    have = {"sha256:" + hashlib.sha256(base).hexdigest()}
    stats: dict[str, int] = {}
    out = b"".join(filter_save_stream(_chunks(src), have, stats))
    with tarfile.open(fileobj=io.BytesIO(out)) as t:
        members = {m.name: m for m in t.getmembers()}
        assert members["aaa/layer.tar"].size == 0
        assert t.extractfile("bbb/layer.tar").read() == top  # type: ignore[union-attr]
        assert t.extractfile("manifest.json").read() == b'[{"Layers": []}]'  # type: ignore[union-attr]
    assert stats == {"layers_sent": 1, "layers_skipped": 1}
    assert len(out) < len(src) - 40_000


def test_nothing_present_passes_the_stream_through() -> None:
    src = _save_tar({"aaa": b"x" * 1000})
    assert b"".join(filter_save_stream(_chunks(src), set())) == src
