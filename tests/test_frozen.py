"""``quick_init``: the frozen dataclasses made on every request get a quicker ``__init__``
that makes the same objects, as frozen as before."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from clawdbot_webhooks_hookspecs import Delivery, SignedRequest
from clawdbot_webhooks_hookspecs.frozen import quick_init
from hypothesis import given
from hypothesis import strategies as st


@dataclasses.dataclass(frozen=True, slots=True)
class _Plain:
    a: int
    b: Any
    c: str = "c"


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class _Quick:
    a: int
    b: Any
    c: str = "c"


@given(st.integers(), st.one_of(st.none(), st.text(), st.lists(st.integers())), st.text())
def test_the_same_object_as_the_dataclass_s_own_init(a: int, b: Any, c: str) -> None:
    for args, kwargs in (((a, b, c), {}), ((), {"a": a, "b": b, "c": c}), ((a,), {"b": b})):
        plain, quick = _Plain(*args, **kwargs), _Quick(*args, **kwargs)
        assert dataclasses.astuple(quick) == dataclasses.astuple(plain)
        assert repr(quick).replace("_Quick", "_Plain") == repr(plain)


def test_the_class_stays_frozen_and_replace_works() -> None:
    delivery = Delivery("d", "h", 1.0, "application/json", b"{}", {}, {}, {}, "ip", "s")
    assert delivery.attempt == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        delivery.payload = {"changed": True}  # type: ignore[misc]
    changed = dataclasses.replace(delivery, payload={"x": 1}, attempt=2)
    assert changed.payload == {"x": 1} and changed.attempt == 2 and delivery.payload == {}
    request = SignedRequest(method="POST", path="/p", headers={}, body=b"", client_ip="ip", now=2.0)
    assert request.query_string == "" and request == dataclasses.replace(request)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.body = b"x"  # type: ignore[misc]


def test_missing_and_unknown_arguments_are_refused_as_before() -> None:
    with pytest.raises(TypeError, match="missing"):
        SignedRequest(method="POST")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword"):
        SignedRequest("POST", "/", {}, b"", "ip", 1.0, nope=1)  # type: ignore[call-arg]


def test_only_plain_frozen_slotted_dataclasses_are_taken() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(slots=True)
    class NotFrozen:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = dataclasses.field(default_factory=list)

    for cls in (NoSlots, NotFrozen, Factory):
        with pytest.raises(TypeError):
            quick_init(cls)
