"""The method declarations (migrate/wire/methods.py): one strict model per method, the docs'
table generated from them (pure)."""

from __future__ import annotations

import pytest

from migrate.core.errors import ProtocolError
from migrate.wire.messages import METHODS, validate_request
from migrate.wire.methods import REQUESTS

pytestmark = pytest.mark.unit


def test_every_method_is_declared_once_and_documented() -> None:
    names = [m.method for m in REQUESTS]
    assert len(names) == len(set(names)) == len(METHODS)
    assert all((m.__doc__ or "").strip() for m in REQUESTS)


def request(method: str, **args: object) -> dict[str, object]:
    return {"type": "request", "id": 1, "method": method, "args": args}


def test_optional_arguments_not_given_stay_unset() -> None:
    # Handlers keep their own defaults for what a source did not send.
    _, m, req = validate_request(request("restore", migration_id="m1"))
    assert m.name == "restore" and req.model_dump(exclude_unset=True) == {"migration_id": "m1"}


@pytest.mark.parametrize(
    ("req", "match"),
    [
        (
            request("hello", protocol=1, min_protocol=1, software="x", faults=["a", 1]),
            r"faults'\[1\] must be str",
        ),
        (
            request("precheck", spec={}, name="n", criu_version=["4"]),
            r"criu_version'\[0\] must be int",
        ),
        (request("prepare", migration_id="m", spec=[], name="n"), "'spec' must be dict"),
        (
            request("prepare", migration_id="m", spec={}, name="n", volumes=[1]),
            r"volumes'\[0\] must be dict",
        ),
        (
            request("put_checkpoint", migration_id="m", memory_bytes="5"),
            "'memory_bytes' must be int",
        ),
        (
            request("drill_verify", drill_id="d", settle_s=1, argv=["true", None], timeout_s=1.5),
            r"argv'\[1\] must be str",
        ),
        (
            request("commit", migration_id="m", extra=1, more=2),
            r"unexpected arguments \['extra', 'more'\]",
        ),
        (request("status"), "missing argument 'migration_id'"),
    ],
)
def test_mistyped_arguments_are_refused_with_their_place(
    req: dict[str, object], match: str
) -> None:
    with pytest.raises(ProtocolError, match=match):
        validate_request(req)
