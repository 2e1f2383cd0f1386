"""Wire models of the streamed startup logs (Coder v0.20-v0.25).

Agent to server: ``PATCH /api/v2/workspaceagents/me/startup-logs`` with
``{"logs": [{"created_at", "output", "level"}]}``; 200 ``null``, 413 once the agent's logs
reached the 1 MiB cap. Server to user: ``GET /api/v2/workspaceagents/{id}/startup-logs``
answers an array of ``{"id", "created_at", "output", "level"}``; with ``follow`` it is a
WebSocket whose text messages are such arrays.

Coder's endpoint has no idempotency: a batch whose 200 was lost is stored twice when the
agent retries it. wsagent sends two headers a Coder server ignores, the batch's stream (one
per script run) and the sequence number of its first line, so the server stores each line
once (see docs/protocol.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from agent.sdk.codec import Obj, format_time
from agent.sdk.errors import DecodeError

LOG_LEVELS: Final = ("trace", "debug", "info", "warn", "error")
# Coder's CHECK constraint: the outputs of one agent's lines sum to at most 1 MiB (bytes).
MAX_STARTUP_LOGS_BYTES: Final = 1 << 20
STREAM_HEADER: Final = "Wsagent-Log-Stream"
SEQ_HEADER: Final = "Wsagent-Log-Seq"


def output_bytes(text: str) -> int:
    """The size Coder counts against the cap: Go's ``len`` of the string, in bytes."""
    return len(text.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True, slots=True)
class StartupLog:
    """One line as the agent sends it (agentsdk.StartupLog)."""

    created_at: datetime
    output: str
    level: str = "info"

    def to_json(self) -> dict[str, Any]:
        return {
            "created_at": format_time(self.created_at),
            "output": self.output,
            "level": self.level,
        }

    @classmethod
    def from_obj(cls, o: Obj) -> StartupLog:
        # Older agents sent no level; Coder takes it as "info". The server checks the value
        # (its own 400 message), so any string decodes here.
        level = o.text("level", "") or "info"
        return cls(created_at=o.time("created_at"), output=o.text("output"), level=level)


@dataclass(frozen=True, slots=True)
class PatchStartupLogs:
    logs: tuple[StartupLog, ...]

    def to_json(self) -> dict[str, Any]:
        return {"logs": [line.to_json() for line in self.logs]}

    @classmethod
    def from_json(cls, value: object, endpoint: str, *, fold_case: bool = True) -> PatchStartupLogs:
        o = Obj(value, endpoint, fold_case=fold_case)
        logs = o.array("logs", lambda v, p: StartupLog.from_obj(Obj(v, endpoint, p)))
        return cls(logs=tuple(logs))


@dataclass(frozen=True, slots=True)
class WorkspaceAgentStartupLog:
    """One stored line as users read it (codersdk.WorkspaceAgentStartupLog)."""

    id: int
    created_at: datetime
    output: str
    level: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": format_time(self.created_at),
            "output": self.output,
            "level": self.level,
        }

    @classmethod
    def from_json(cls, value: object, endpoint: str) -> WorkspaceAgentStartupLog:
        o = Obj(value, endpoint)
        return cls(
            id=o.integer("id"),
            created_at=o.time("created_at"),
            output=o.text("output"),
            level=o.text("level", "info") or "info",
        )


def decode_log_array(value: object, endpoint: str) -> list[WorkspaceAgentStartupLog]:
    if not isinstance(value, list):
        raise DecodeError(endpoint, "$", "expected an array of logs")
    return [WorkspaceAgentStartupLog.from_json(v, endpoint) for v in value]
