"""What the agent answers (migrate/wire/results.py): one strict model per method, built by the
handlers themselves; and the handler table (migrate/agent/handlers.py) serves exactly the
protocol's methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest
from test_protocol import Pipe

from migrate.agent.handlers import Handler, handler_table, plain, streamed
from migrate.agent.server import Agent
from migrate.core.errors import ProtocolError
from migrate.engines.base import ImageInfo
from migrate.wire import methods, results
from migrate.wire.connection import Connection
from migrate.wire.messages import METHODS, validate_request
from migrate.wire.methods import REQUESTS, Request

pytestmark = pytest.mark.unit

_STEPS = {"images": 0.01, "daemon": 0.02, "docker_start": 0.3, "until_running": 0.05}
_HELLO = {
    "software": "0.1.0",
    "protocol": 1,
    "hostname": "b",
    "kernel": "6.18.0",
    "methods": ["bye", "hello"],
    "staging": ["disk", "memory"],
    "stream_frames": "multi",
    "criu_version": None,
    "criu_ok": False,
    "engine_error": {"code": "engine.unavailable", "message": "x", "hint": "", "details": {}},
}

# Answers shaped as each handler builds them today (every optional key in at least one).
ANSWERS: dict[str, list[dict[str, Any]]] = {
    "hello": [_HELLO],
    "precheck": [{"ok": True}, {"ok": True, "lazy": {"ok": False, "why": "no uffd"}}],
    "cpuinfo_check": [{"ok": False, "output": "cpu flags differ"}],
    "image_status": [{"image_present": False, "layers_present": ["sha256:a"]}],
    "load_image": [{"loaded": True}],
    "prepare": [{"container_id": "c1"}],
    "put_rootfs": [{"files": 3, "bytes": 10}],
    "precopy_rootfs": [{"files": 3, "bytes": 10}],
    "put_rootfs_delta": [{"files": 3, "bytes": 10, "kept": 2, "removed": 1}],
    "precopy_volume": [{"files": 0, "bytes": 0}],
    "put_volume_delta": [{"files": 1, "bytes": 1, "kept": 0, "removed": 0}],
    "put_volume": [{"files": 1, "bytes": 5}],
    "precopy_bind": [{"files": 1, "bytes": 5}],
    "put_bind_delta": [{"files": 1, "bytes": 5, "kept": 1, "removed": 0}],
    "put_bind": [{"files": 1, "bytes": 5}],
    "put_log": [{"bytes": 0}],
    "put_checkpoint": [{"files": 9, "bytes": 4096, "staging": "memory"}],
    "restore": [
        {"container_id": "c", "restore_s": 0.5, "running_s": 0.4, "restore_mode": "plain"},
        {
            "container_id": "c",
            "restore_s": 0.5,
            "running_s": 0.4,
            "restore_mode": "lazy_local",
            "memory_fill_s": 0.2,
            "lazy_bytes": 1 << 20,
        },
        {
            "container_id": "c",
            "restore_s": 0.4,
            "running_s": 0.4,
            "restore_mode": "postcopy",
            "restore_steps": _STEPS,
        },
    ],
    "postcopy_wait": [
        {"postcopy_s": 1.5, "bytes": 4096},
        {
            "postcopy_s": 1.5,
            "bytes": 4096,
            "pages_total": 10,
            "pages_copied": 10,
            "pages_on_demand": 2,
            "pages_background": 8,
        },
    ],
    "commit": [{"committed": True}],
    "abort": [{"aborted": True}, {"aborted": True, "known": False}],
    "status": [{"last": "", "live": False}],
    "drill_restore": [
        {
            "container_id": "c",
            "volumes": ["v-drill-1"],
            "restore_s": 0.3,
            "restore_mode": "lazy_local",
            "recovery_s": 2.5,
            "image_loaded": False,
            "bundle_bytes": 100,
        }
    ],
    "drill_verify": [
        {"status": "running", "running": True, "exit_code": None, "timed_out": True, "output": ""}
    ],
    "drill_remove": [
        {"kept": True, "container_removed": False, "image_removed": False},
        {
            "kept": False,
            "container_removed": True,
            "volumes_removed": ["v"],
            "image_removed": True,
        },
    ],
    "bulk_open": [{"socket": "/run/x.sock", "token": "t"}],
    "bye": [{}],
}


def test_every_method_has_representative_answers() -> None:
    assert set(ANSWERS) == set(METHODS)


@pytest.mark.parametrize(
    ("method", "answer"), [(m, a) for m, answers in ANSWERS.items() for a in answers]
)
def test_an_answer_round_trips_exactly(method: str, answer: dict[str, Any]) -> None:
    model = METHODS[method].model.result
    assert model.model_validate(answer).to_wire() == answer


@pytest.mark.parametrize("method", sorted(ANSWERS))
def test_unknown_fields_are_refused(method: str) -> None:
    model = METHODS[method].model.result
    with pytest.raises(pydantic.ValidationError, match="extra"):
        model.model_validate({**ANSWERS[method][0], "surprise": 1})


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("precheck", {"ok": 1}),  # no coercion: 1 is not true
        ("precheck", {"ok": True, "lazy": {"ok": True}}),  # nested shapes included
        ("image_status", {"image_present": False, "layers_present": ["a", 2]}),
        ("put_checkpoint", {"files": 1, "bytes": 1, "staging": "tape"}),
        ("restore", {"container_id": "c", "restore_s": "1", "running_s": 1.0, "restore_mode": ""}),
        ("status", {"last": None, "live": False}),
        ("put_rootfs_delta", {"files": 1, "bytes": 1, "kept": 1}),
        ("hello", {**_HELLO, "engine_error": {"code": "x"}}),
    ],
)
def test_wrong_types_and_shapes_are_refused(method: str, answer: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        METHODS[method].model.result.model_validate(answer)


def test_each_request_knows_its_result_model() -> None:
    for req in REQUESTS:
        assert issubclass(req.result, results.Result)
    assert methods.Restore.result is results.RestoreResult
    assert methods.PutVolumeDelta.result is results.DeltaResult
    assert methods.Hello.result is results.AgentHello


# --- the handler table -------------------------------------------------------------------------


def _agent(tmp_path: Path, engine: Any = None) -> Agent:
    return Agent(Connection(Pipe()), engine_factory=lambda: engine, state_dir=tmp_path)


def test_the_handler_table_serves_exactly_the_requests(tmp_path: Path) -> None:
    table = _agent(tmp_path)._handlers
    assert {name: h.model for name, h in table.items()} == {r.method: r for r in REQUESTS}


def _bye(req: methods.Bye) -> results.Empty:
    return results.Empty()


def test_handler_table_refuses_gaps_doubles_and_strangers(tmp_path: Path) -> None:
    full = list(_agent(tmp_path)._handlers.values())
    with pytest.raises(RuntimeError, match="no handler for \\['bye'\\]"):
        handler_table([h for h in full if h.model is not methods.Bye])
    with pytest.raises(RuntimeError, match="two handlers for bye"):
        handler_table([*full, plain(methods.Bye, _bye)])

    class Stranger(Request[results.Empty]):
        """Not in REQUESTS."""

        method = "bye"

    with pytest.raises(RuntimeError, match="not a method of the protocol"):
        handler_table([plain(Stranger, lambda req: results.Empty())])


def test_a_handler_is_bound_to_its_stream_kind() -> None:
    with pytest.raises(TypeError, match="takes a stream"):
        plain(methods.PutLog, lambda req: results.LogResult(bytes=0))
    with pytest.raises(TypeError, match="takes no stream"):
        streamed(methods.Bye, lambda req, stream: results.Empty())


def test_an_answer_of_another_shape_is_a_bug() -> None:
    h = Handler(methods.Bye, lambda req, stream: results.CommitResult(committed=True))
    with pytest.raises(TypeError, match="bye answered CommitResult, not Empty"):
        h(methods.Bye())


# --- handlers answer with their models -----------------------------------------------------------


class FakeEngine:
    """Just enough of an Engine for the image handlers."""

    def __init__(self) -> None:
        self.images: dict[str, ImageInfo] = {}
        self.loaded = b""

    def image(self, ref: str) -> ImageInfo | None:
        return self.images.get(ref)

    def layers_present(self) -> set[str]:
        return {"sha256:a"}

    def load_image(self, chunks: Any) -> None:
        self.loaded = b"".join(chunks)
        self.images["sha256:img"] = ImageInfo("sha256:img", (), ("sha256:a", "sha256:b"), 1)


def _request(method: str, **args: Any) -> Any:
    return validate_request({"type": "request", "id": 1, "method": method, "args": args})[2]


def test_image_status_answers_its_model(tmp_path: Path) -> None:
    engine = FakeEngine()
    agent = _agent(tmp_path, engine)
    req = _request("image_status", image_id="sha256:img", diff_ids=["sha256:a", "sha256:b"])
    res = agent._handlers["image_status"](req)
    assert res == results.ImageStatusResult(image_present=False, layers_present=["sha256:a"])
    engine.load_image(iter([b""]))
    assert agent._handlers["image_status"](req).to_wire() == {
        "image_present": True,
        "layers_present": ["sha256:a", "sha256:b"],
    }


def test_journal_handlers_answer_their_models(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    status = agent._handlers["status"](_request("status", migration_id="m1"))
    assert status.to_wire() == {"last": "", "live": False}
    abort = agent._handlers["abort"](_request("abort", migration_id="m1"))
    assert abort.to_wire() == {"aborted": True, "known": False}
    with pytest.raises(ProtocolError, match="unknown migration"):
        agent._handlers["commit"](_request("commit", migration_id="m1"))
    assert agent._handlers["bye"](_request("bye")).to_wire() == {}
