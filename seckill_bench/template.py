"""ghz-style request templates: `{{.RequestNumber}}` and friends, rendered without an engine.

A template is split once into literal text and placeholders. Values that never change for a
worker (its id, the method's names) are filled in when the worker is bound, so the hot path
joins a few strings and fills only what changes per call (the request number, a UUID, the
clock). A template with nothing left to fill is parsed and serialised once per worker.

Besides ghz's fields, two of the sprig functions ghz offers work on the request number:
`{{div .RequestNumber 2}}` (every value twice: each user buys twice) and
`{{mod .RequestNumber 100}}` (a hundred users over and over).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# `{{.Name}}`, with optional spaces inside the braces as Go templates allow.
_PLACEHOLDER = re.compile(r"{{\s*([^{}]*?)\s*}}")
_FUNCTION = re.compile(r"(div|mod)\s+\.RequestNumber\s+(\d+)")

#: Placeholders whose value is the same for every call a worker makes.
STATIC_NAMES = ("WorkerID", "FullyQualifiedName", "MethodName", "ServiceName")
#: Placeholders whose value changes from call to call.
DYNAMIC_NAMES = (
    "RequestNumber", "UUID", "TimestampUnix", "TimestampUnixMilli", "TimestampUnixNano",
)
KNOWN_NAMES = STATIC_NAMES + DYNAMIC_NAMES
FUNCTIONS = ("{{div .RequestNumber N}}", "{{mod .RequestNumber N}}")


class TemplateError(ValueError):
    """The template names a placeholder this tool does not know, or is malformed."""


def _value_function(key: str) -> Callable[[int], str]:
    """Request number → text, for one dynamic placeholder key."""
    if key == "RequestNumber":
        return str
    if key.startswith(("div ", "mod ")):
        op, divisor = key.split()
        n = int(divisor)
        return (lambda number: str(number // n)) if op == "div" else (
            lambda number: str(number % n))
    if key == "UUID":
        return lambda _number: str(uuid.uuid4())
    if key == "TimestampUnix":
        return lambda _number: str(time.time_ns() // 1_000_000_000)
    if key == "TimestampUnixMilli":
        return lambda _number: str(time.time_ns() // 1_000_000)
    return lambda _number: str(time.time_ns())  # TimestampUnixNano


def _key(expr: str) -> str | None:
    """The placeholder key of a `{{...}}` expression, or None when unknown."""
    if expr.startswith(".") and expr[1:] in KNOWN_NAMES:
        return expr[1:]
    match = _FUNCTION.fullmatch(expr)
    if match and int(match.group(2)) > 0:
        return f"{match.group(1)} {int(match.group(2))}"
    return None


@dataclass(frozen=True)
class Template:
    """A parsed template: `parts` alternate literal text (even indexes) and keys (odd)."""

    text: str
    parts: tuple[str, ...]

    @classmethod
    def compile(cls, text: str) -> Template:
        pieces = _PLACEHOLDER.split(text)
        unknown: list[str] = []
        for i in range(1, len(pieces), 2):
            key = _key(pieces[i])
            if key is None:
                unknown.append("{{" + pieces[i] + "}}")
            pieces[i] = key or ""
        if unknown:
            known = [f"{{{{.{n}}}}}" for n in KNOWN_NAMES] + list(FUNCTIONS)
            raise TemplateError(
                f"unknown template placeholder(s) {', '.join(sorted(set(unknown)))}; "
                f"known: {', '.join(known)}"
            )
        return cls(text, tuple(pieces))

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.parts[1::2])

    @property
    def is_constant(self) -> bool:
        return not self.names

    def bind(self, static: Mapping[str, str]) -> BoundTemplate:
        """Fills the static placeholders (one worker's values); merges adjacent literals."""
        merged: list[str] = [self.parts[0]]
        dynamic: list[str] = []
        for i in range(1, len(self.parts), 2):
            key, literal = self.parts[i], self.parts[i + 1]
            if key in static:
                merged[-1] += static[key] + literal
            else:
                dynamic.append(key)
                merged.append(literal)
        return BoundTemplate(tuple(merged), tuple(dynamic))


@dataclass(frozen=True)
class BoundTemplate:
    """A template with one worker's static values in; `dynamic` names what is left."""

    literals: tuple[str, ...]  # len(dynamic) + 1 pieces of text around the dynamic values
    dynamic: tuple[str, ...]

    @property
    def is_constant(self) -> bool:
        return not self.dynamic

    def renderer(self) -> Callable[[int], str]:
        """A function from request number to request text, specialised for the common cases."""
        literals, dynamic = self.literals, self.dynamic
        if not dynamic:
            text = literals[0]
            return lambda _number: text
        # Like ghz, every placeholder has one value per request, however often it appears.
        if len(set(dynamic)) == 1:
            value_of = _value_function(dynamic[0])
            if len(literals) == 2:
                head, tail = literals
                return lambda number: f"{head}{value_of(number)}{tail}"
            return lambda number: value_of(number).join(literals)
        keys = list(dict.fromkeys(dynamic))
        functions = [_value_function(key) for key in keys]
        slots = [(keys.index(key), literal)
                 for key, literal in zip(dynamic, literals[1:], strict=True)]
        first = literals[0]

        def render(number: int) -> str:
            values = [value_of(number) for value_of in functions]
            out = [first]
            for slot, literal in slots:
                out.append(values[slot])
                out.append(literal)
            return "".join(out)
        return render

    def render(self, number: int) -> str:
        return self.renderer()(number)


def static_values(full_method: str, worker_id: str) -> dict[str, str]:
    """The static placeholder values for a worker calling `package.Service/Method`."""
    service, method = full_method.rsplit("/", 1)
    return {
        "WorkerID": worker_id,
        "FullyQualifiedName": f"{service}.{method}",
        "MethodName": method,
        "ServiceName": service,
    }
