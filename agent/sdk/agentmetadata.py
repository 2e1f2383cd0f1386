"""Wire models of agent metadata (Coder v0.20-v0.25): commands the template defines, run by
the agent on an interval, their latest results kept by the server.

- In ``GET /me/metadata``: ``"metadata": [{display_name, key, script, interval, timeout}]``
  (codersdk.WorkspaceAgentMetadataDescription; ``interval`` and ``timeout`` are integer
  **seconds**, unlike the nanosecond script timeouts).
- Agent to server: ``POST /me/metadata/{key}`` with ``{collected_at, age, value, error}``
  (codersdk.WorkspaceAgentMetadataResult; ``age`` is whole seconds since collection); 204.
- To users: ``[{"result": {...}, "description": {...}}]`` sorted by key
  (codersdk.WorkspaceAgentMetadata), in the agent view and on the watch stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from agent.sdk.codec import Obj, format_time
from agent.sdk.errors import DecodeError

# Coder keeps at most 2048 bytes of a value or an error (the Postgres NOTIFY limit).
MAX_VALUE_BYTES: Final = 2048
MAX_ERROR_BYTES: Final = 2048
# A key travels in the URL path: keep it to what a Terraform attribute name allows.
KEY_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}")
ZERO_TIME: Final = "0001-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class MetadataDescription:
    key: str
    script: str
    interval: int  # seconds; 0 runs the command once
    timeout: int  # seconds; 0 means the agent's default
    display_name: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "display_name": self.display_name,
            "key": self.key,
            "script": self.script,
            "interval": self.interval,
            "timeout": self.timeout,
        }

    @classmethod
    def from_obj(cls, o: Obj) -> MetadataDescription:
        interval = o.integer("interval", 0)
        timeout = o.integer("timeout", 0)
        for name, value in (("interval", interval), ("timeout", timeout)):
            if value < 0:
                raise DecodeError(o.endpoint, o.at(name), "negative duration")
        return cls(
            display_name=o.text("display_name", ""),
            key=o.text("key"),
            script=o.text("script", ""),
            interval=interval,
            timeout=timeout,
        )


def decode_descriptions(o: Obj, key: str) -> list[MetadataDescription]:
    return o.array(key, lambda v, p: MetadataDescription.from_obj(Obj(v, o.endpoint, p)))


@dataclass(frozen=True, slots=True)
class MetadataResult:
    collected_at: datetime | None
    age: int
    value: str
    error: str

    def to_json(self) -> dict[str, Any]:
        return {
            "collected_at": ZERO_TIME
            if self.collected_at is None
            else format_time(self.collected_at),
            "age": self.age,
            "value": self.value,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, value: object, endpoint: str, *, fold_case: bool = False) -> MetadataResult:
        o = Obj(value, endpoint, fold_case=fold_case)
        collected = o.text("collected_at", ZERO_TIME)
        age = o.integer("age", 0)
        if age < 0:
            raise DecodeError(endpoint, o.at("age"), "negative age")
        return cls(
            collected_at=None if collected.startswith("0001-") else o.time("collected_at"),
            age=age,
            value=o.text("value", ""),
            error=o.text("error", ""),
        )


@dataclass(frozen=True, slots=True)
class WorkspaceAgentMetadata:
    result: MetadataResult
    description: MetadataDescription

    def to_json(self) -> dict[str, Any]:
        return {"result": self.result.to_json(), "description": self.description.to_json()}

    @classmethod
    def from_json(cls, value: object, endpoint: str) -> WorkspaceAgentMetadata:
        o = Obj(value, endpoint)
        return cls(
            result=MetadataResult.from_json(o.get("result"), endpoint),
            description=MetadataDescription.from_obj(o.obj("description")),
        )
