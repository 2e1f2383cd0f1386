"""Strict JSON decoding with field paths, and Go-compatible encoding.

Every decoder in the SDK goes through :class:`Obj`, so a wrong body always raises one
:class:`DecodeError` naming the endpoint and the field path (``$.apps[0].id``), never a
``KeyError`` or a ``TypeError``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from agent.sdk.errors import DecodeError

T = TypeVar("T")

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


def type_name(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case dict():
            return "object"
    return type(value).__name__


# A ``\uD800``-``\uDFFF`` escape is the only way JSON text that is itself valid UTF-8 can
# carry a lone surrogate; checking for it first keeps the common case to one regex scan.
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


class NotUTF8Error(ValueError):
    """A JSON string holds a lone surrogate: no UTF-8 encoding exists for it."""


def parse_json(text: str) -> Any:
    """``json.loads`` that refuses NaN/Infinity and strings that are not valid UTF-8.

    Python decodes ``"\\ud800"`` to a str that cannot be encoded again, so the first store
    write or log line holding it would fail; refusing it here covers every decoder at once.
    """
    value = json.loads(text, parse_constant=_reject_constant)
    if _SURROGATE_ESCAPE.search(text):
        _check_utf8(value)
    return value


def _check_utf8(value: object) -> None:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            strings: list[object] = [item]
        elif isinstance(item, dict):
            strings = list(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
            continue
        else:
            continue
        for text in strings:
            try:
                str(text).encode("utf-8")
            except UnicodeEncodeError:
                raise NotUTF8Error(
                    "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), not valid UTF-8"
                ) from None


def loads(endpoint: str, data: bytes | str) -> Any:
    """Parse JSON text, mapping every parse failure to :class:`DecodeError`."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    except UnicodeDecodeError as exc:
        raise DecodeError(endpoint, "$", f"body is not UTF-8: {exc.reason}") from None
    try:
        return parse_json(text)
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise DecodeError(endpoint, "$", f"invalid JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    # Python accepts NaN and Infinity; JSON (and Go's decoder) does not.
    raise ValueError(f"invalid character {name[:1]!r} looking for beginning of value")


def dumps(value: Any) -> bytes:
    """Encode like Go's json.Encoder with HTML escaping off: compact, UTF-8, newline."""
    return (json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def check_int(value: object, endpoint: str, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(endpoint, path, f"expected integer, got {type_name(value)}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise DecodeError(endpoint, path, "integer out of int64 range")
    return value


def check_str(value: object, endpoint: str, path: str) -> str:
    if not isinstance(value, str):
        raise DecodeError(endpoint, path, f"expected string, got {type_name(value)}")
    return value


def check_bool(value: object, endpoint: str, path: str) -> bool:
    if not isinstance(value, bool):
        raise DecodeError(endpoint, path, f"expected boolean, got {type_name(value)}")
    return value


def check_float(value: object, endpoint: str, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError(endpoint, path, f"expected number, got {type_name(value)}")
    return float(value)


def check_uuid(value: object, endpoint: str, path: str) -> str:
    import uuid  # not at the top: the agent's first request goes out before it is needed

    text = check_str(value, endpoint, path)
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise DecodeError(endpoint, path, f"invalid UUID {text[:64]!r}") from None


def check_time(value: object, endpoint: str, path: str) -> datetime:
    text = check_str(value, endpoint, path)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DecodeError(endpoint, path, f"invalid RFC 3339 time {text[:64]!r}") from None
    if parsed.tzinfo is None:
        raise DecodeError(endpoint, path, "time has no zone offset")
    return parsed


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds, as Coder's server rounds them."""
    value = value.astimezone(UTC)
    if value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


class Obj:
    """A JSON object being decoded, remembering its endpoint and path.

    ``fold_case`` mimics Go's case-insensitive field matching; the server decodes agent
    requests that way, the agent decodes server answers exactly.
    """

    __slots__ = ("_folded", "endpoint", "path", "raw")

    def __init__(
        self, value: object, endpoint: str, path: str = "$", *, fold_case: bool = False
    ) -> None:
        if not isinstance(value, dict):
            raise DecodeError(endpoint, path, f"expected object, got {type_name(value)}")
        self.raw: dict[str, Any] = value
        self.endpoint = endpoint
        self.path = path
        self._folded: dict[str, str] | None = None
        if fold_case:
            self._folded = {}
            for key in value:
                self._folded.setdefault(key.lower(), key)

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def get(self, key: str, default: object = MISSING) -> object:
        actual = key
        if key not in self.raw and self._folded is not None:
            actual = self._folded.get(key.lower(), key)
        if actual in self.raw:
            return self.raw[actual]
        if default is MISSING:
            raise DecodeError(self.endpoint, self.at(key), "required field is missing")
        return default

    def text(self, key: str, default: str | _Missing = MISSING) -> str:
        value = self.get(key, default)
        return check_str(value, self.endpoint, self.at(key))

    def integer(self, key: str, default: int | _Missing = MISSING) -> int:
        return check_int(self.get(key, default), self.endpoint, self.at(key))

    def flag(self, key: str, default: bool | _Missing = MISSING) -> bool:
        return check_bool(self.get(key, default), self.endpoint, self.at(key))

    def number(self, key: str, default: float | _Missing = MISSING) -> float:
        return check_float(self.get(key, default), self.endpoint, self.at(key))

    def uuid(self, key: str) -> str:
        return check_uuid(self.get(key), self.endpoint, self.at(key))

    def time(self, key: str) -> datetime:
        return check_time(self.get(key), self.endpoint, self.at(key))

    def opt_time(self, key: str) -> datetime | None:
        value = self.get(key, None)
        return None if value is None else check_time(value, self.endpoint, self.at(key))

    def obj(self, key: str, default: object = MISSING) -> Obj:
        value = self.get(key, default)
        return Obj(value, self.endpoint, self.at(key), fold_case=self._folded is not None)

    def opt_obj(self, key: str) -> Obj | None:
        value = self.get(key, None)
        if value is None:
            return None
        return Obj(value, self.endpoint, self.at(key), fold_case=self._folded is not None)

    def array(
        self, key: str, item: Callable[[object, str], T], *, nullable: bool = True
    ) -> list[T]:
        """Decode an array; Go encodes a nil slice as null, so null means empty."""
        value = self.get(key, None if nullable else MISSING)
        path = self.at(key)
        if value is None and nullable:
            return []
        if not isinstance(value, list):
            raise DecodeError(self.endpoint, path, f"expected array, got {type_name(value)}")
        return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]

    def mapping(
        self, key: str, item: Callable[[object, str], T], *, nullable: bool = True
    ) -> dict[str, T]:
        """Decode an object used as a map; null means empty, as Go encodes a nil map."""
        value = self.get(key, None if nullable else MISSING)
        path = self.at(key)
        if value is None and nullable:
            return {}
        if not isinstance(value, dict):
            raise DecodeError(self.endpoint, path, f"expected object, got {type_name(value)}")
        return {k: item(v, f"{path}.{k}") for k, v in value.items()}

    def text_map(self, key: str) -> dict[str, str]:
        return self.mapping(key, lambda v, p: check_str(v, self.endpoint, p))

    def int_map(self, key: str) -> dict[str, int]:
        return self.mapping(key, lambda v, p: check_int(v, self.endpoint, p))

    def float_map(self, key: str) -> dict[str, float]:
        return self.mapping(key, lambda v, p: check_float(v, self.endpoint, p))

    def text_list(self, key: str) -> list[str]:
        return self.array(key, lambda v, p: check_str(v, self.endpoint, p))

    def one_of(self, key: str, allowed: frozenset[str] | Mapping[str, object]) -> str:
        value = self.text(key)
        if value not in allowed:
            choices = ", ".join(sorted(allowed))
            raise DecodeError(
                self.endpoint, self.at(key), f"{value[:64]!r} is not one of {choices}"
            )
        return value
