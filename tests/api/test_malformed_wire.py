"""Malformed wire bytes (issue 4): random bytes, truncated messages, wrong wire types, invalid
UTF-8 in string fields and deep nesting, sent raw through a generic call to every RPC.

Protobuf itself is the oracle: bytes it cannot parse as the method's request message must be
answered INVALID_ARGUMENT (with a BadRequest), never grpc's default UNKNOWN/INTERNAL; bytes it
parses (unknown fields and fields of the wrong wire type are skipped, not errors) must get what
the parsed request gets, a documented code. `Prober.call` checks both, and that nothing changed
in the database for a refused call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers.bad_input import (
    SERVICES,
    Prober,
    ServerLog,
    Tally,
    all_methods,
    examples,
    method_path,
    parses,
    running_prober,
)
from tests.helpers.wire import varint

INPUTS: dict[str, Descriptor] = {
    method_path(s.name, m.name): m.input_type for s in SERVICES for m in s.methods}
# Wire types: 0 varint, 1 fixed64, 2 length-delimited, 3/4 group start/end, 5 fixed32; 6 and 7
# do not exist.
WIRE_TYPE_OF = {
    FieldDescriptor.TYPE_INT64: 0, FieldDescriptor.TYPE_INT32: 0, FieldDescriptor.TYPE_ENUM: 0,
    FieldDescriptor.TYPE_BOOL: 0, FieldDescriptor.TYPE_STRING: 2, FieldDescriptor.TYPE_MESSAGE: 2,
}
ran: Counter[str] = Counter()
# A database warning raised in a service becomes an error there (an INTERNAL that fails).
pytestmark = pytest.mark.filterwarnings("error::pymysql.err.Warning")


@pytest.fixture(scope="module")
async def server_log() -> AsyncIterator[ServerLog]:
    with ServerLog() as log:
        yield log


@pytest.fixture(scope="module")
async def prober(mariadb: str, server_log: ServerLog) -> AsyncIterator[Prober]:
    """One stack for the enumerated inputs (nothing they send can change a row)."""
    async with running_prober(mariadb) as p:
        yield p


@pytest.fixture(scope="module")
def property_tally() -> Tally:
    return Tally()


@pytest.fixture
async def own_prober(mariadb: str, server_log: ServerLog,
                     property_tally: Tally) -> AsyncIterator[Prober]:
    """A property test's own fresh database and stack; its answers count in the totals."""
    async with running_prober(mariadb) as p:
        yield p
    property_tally.add(p)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def nest(numbers: tuple[int, ...], leaf: bytes) -> bytes:
    """`leaf` (a field's bytes, tag included) inside the messages named by `numbers`."""
    for number in reversed(numbers):
        leaf = tag(number, 2) + varint(len(leaf)) + leaf
    return leaf


def fields(descriptor: Descriptor, path: tuple[int, ...] = (), depth: int = 0
           ) -> list[tuple[tuple[int, ...], FieldDescriptor, str]]:
    """Every field reachable from a request message: (enclosing numbers, field, dotted name)."""
    found = []
    for field in descriptor.fields:
        name = ".".join([*(str(n) for n in path), field.name])
        found.append((path, field, name))
        if field.type == FieldDescriptor.TYPE_MESSAGE and depth < 3:
            found += fields(field.message_type,  # type: ignore[arg-type]
                            (*path, field.number), depth + 1)
    return found


STRING_FIELDS = [(method, path, field.number, f"{method} {name}")
                 for method, descriptor in INPUTS.items()
                 for path, field, name in fields(descriptor)
                 if field.type == FieldDescriptor.TYPE_STRING]


def populated(method: str) -> bytes:
    """A request with every reachable field set, as bytes (for truncation)."""
    request = message_factory.GetMessageClass(INPUTS[method])()

    def fill(message, depth: int = 0) -> None:
        for field in message.DESCRIPTOR.fields:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                if depth < 3:
                    fill(getattr(message, field.name), depth + 1)
            elif field.is_repeated and field.type == FieldDescriptor.TYPE_ENUM:
                getattr(message, field.name).extend([1, 2])
            elif field.is_repeated:
                getattr(message, field.name).extend(["name", "stock"])
            elif field.type == FieldDescriptor.TYPE_STRING:
                setattr(message, field.name, "caf\u00e9 \U0001f600")
            else:
                setattr(message, field.name, 1_700_000_000)
    fill(request)
    return request.SerializeToString()


async def check(prober: Prober, method: str, data: bytes) -> None:
    """One raw call: unparseable bytes must be INVALID_ARGUMENT (Prober checks the rest)."""
    outcome = await prober.call(method, data)
    if not parses(prober.request_class(method), data):
        assert outcome.code == "INVALID_ARGUMENT", (method, data[:60], outcome.code)


@examples(1400)
@given(method=st.sampled_from(all_methods()), data=st.binary(max_size=300))
async def test_random_bytes(own_prober: Prober, method: str, data: bytes) -> None:
    ran["random bytes"] += 1
    await check(own_prober, method, data)


# Sequences no UTF-8 decoder accepts: stray continuation, overlong NUL, truncated sequences,
# an encoded surrogate, a code point past U+10FFFF, a 5-byte form, bytes never used.
INVALID_UTF8 = [b"\x80", b"\xc0\x80", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                b"\xf8\x88\x80\x80\x80", b"\xff", b"\xfe\xff"]
invalid_utf8 = st.builds(
    lambda before, bad, after: before.encode() + bad + after.encode(),
    st.text(max_size=20), st.sampled_from(INVALID_UTF8), st.text(max_size=20))


@examples(700)
@given(target=st.sampled_from(STRING_FIELDS), text=invalid_utf8)
async def test_invalid_utf8_in_every_string_field(
        own_prober: Prober, target: tuple[str, tuple[int, ...], int, str], text: bytes) -> None:
    """proto3 strings must be UTF-8: Python's protobuf refuses the message, so the service
    must answer INVALID_ARGUMENT whichever string field (nested or repeated) holds them."""
    ran["invalid utf-8"] += 1
    method, path, number, _ = target
    data = nest(path, tag(number, 2) + varint(len(text)) + text)
    assert not parses(own_prober.request_class(method), data)
    await check(own_prober, method, data)


@pytest.mark.parametrize("method", all_methods())
async def test_every_truncation_of_a_full_request(prober: Prober, method: str) -> None:
    data = populated(method)
    for end in range(len(data)):
        ran["truncated"] += 1
        await check(prober, method, data[:end])


def wrong_wire_types(number: int, right: int) -> list[bytes]:
    """Field `number` written with every wire type but its own (payloads well formed)."""
    payloads = {
        0: varint(1), 1: b"\x01" * 8, 2: varint(3) + b"abc",
        3: tag(number, 4),  # an empty group: start, then its end
        4: b"", 5: b"\x01" * 4, 6: b"", 7: b"",
    }
    return [tag(number, wt) + payloads[wt] for wt in range(8) if wt != right]


@pytest.mark.parametrize("method", all_methods())
async def test_wrong_wire_types_at_every_field(prober: Prober, method: str) -> None:
    """A known field with another wire type is skipped as unknown by protobuf (the request
    parses, with that field unset), except the wire types that do not exist (6, 7) and a
    group end without its start: those are INVALID_ARGUMENT."""
    for path, field, _ in fields(INPUTS[method]):
        for data in wrong_wire_types(field.number, WIRE_TYPE_OF[field.type]):
            ran["wrong wire type"] += 1
            await check(prober, method, nest(path, data))


CORRUPT = {
    "field number 0": b"\x00",
    "tag without value": b"\x08",
    "11-byte varint": b"\x08" + b"\xff" * 10 + b"\x01",
    "length past the end": b"\x12\x05ab",
    "length 2^32-1": b"\x12\xff\xff\xff\xff\x0f",
    "negative length": b"\x12" + b"\xff" * 9 + b"\x01",
    "wire type 6": b"\x0e",
    "wire type 7": b"\x0f",
    "end group without start": b"\x0c",
    "group never ended": b"\x5b\x08\x01",
    "group ended by another number": b"\x5b\x64",
    "groups nested 99 deep": b"\x5b" * 99 + b"\x5c" * 99,
    "groups nested 101 deep": b"\x5b" * 101 + b"\x5c" * 101,
    "groups nested 20,000 deep": b"\x5b" * 20_000 + b"\x5c" * 20_000,
    "fixed64 cut short": b"\x59\x01\x02",
    "unknown field number 2^29-1": tag(2**29 - 1, 0) + b"\x01",
    "field number 2^29": varint(2**29 << 3) + b"\x01",
    "every byte value": bytes(range(256)),
}


@pytest.mark.parametrize("method", all_methods())
@pytest.mark.parametrize("data", CORRUPT.values(), ids=CORRUPT.keys())
async def test_classic_corruptions(prober: Prober, method: str, data: bytes) -> None:
    ran["classic corruption"] += 1
    await check(prober, method, data)


async def test_totals_and_no_server_error(prober: Prober, server_log: ServerLog,
                                          property_tally: Tally) -> None:
    """Runs last: what the module tried, and that no service logged an error meanwhile."""
    property_tally.add(prober)
    print("\n" + property_tally.table())
    print("examples per input class:", dict(ran), "total", ran.total())
    assert not server_log.server_errors(), server_log.server_errors()
