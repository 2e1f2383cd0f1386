"""Extra log outputs with `coder agent`'s flags: ``--log-human``, ``--log-json`` and
``--log-stackdriver`` (``CODER_AGENT_LOGGING_HUMAN``/``_JSON``/``_STACKDRIVER``).

Each names ``/dev/stdout``, ``/dev/stderr`` or a file; every event then also goes there in
that format. Files are opened like the agent's own log (no links, 0600) and rotated at the
same size cap, so an extra output cannot fill the disk either. Lines are scrubbed of
secrets like every other log line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import structlog

from wscommon.logs import REDACTOR, BackgroundWriter, RotatingFile

HUMAN: Final = "human"
JSON: Final = "json"
STACKDRIVER: Final = "stackdriver"

# Google Cloud Logging's severity names for structlog's levels.
_SEVERITY: Final = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARNING",
    "warn": "WARNING",
    "error": "ERROR",
    "critical": "CRITICAL",
    "exception": "ERROR",
}


class _Writer(Protocol):
    def write(self, text: str) -> object: ...


def render(kind: str, method: str, event_dict: MutableMapping[str, Any]) -> str:
    """One log line (without the newline) in ``kind``'s format. Pure."""
    if kind == HUMAN:
        return str(structlog.dev.ConsoleRenderer(colors=False)(None, method, dict(event_dict)))
    if kind == STACKDRIVER:
        # Cloud Logging reads "severity", "message" and "time" from a JSON line.
        fields = dict(event_dict)
        level = str(fields.pop("level", method))
        line = {
            "severity": _SEVERITY.get(level, "DEFAULT"),
            "message": fields.pop("event", ""),
            "time": fields.pop("timestamp", None),
            **fields,
        }
        return json.dumps(line, default=repr, ensure_ascii=False)
    return json.dumps(dict(event_dict), default=repr, ensure_ascii=False)


@dataclass
class Sinks:
    """A structlog processor copying each event to the extra outputs; pass-through."""

    outputs: list[tuple[str, _Writer]] = field(default_factory=list)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def __call__(
        self, _logger: object, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for kind, writer in self.outputs:
            try:
                writer.write(REDACTOR.scrub(render(kind, method, event_dict)) + "\n")
            except (OSError, ValueError):
                pass  # a closed stream or a full disk must not stop the agent
        return event_dict

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()
        self.outputs.clear()


def open_sinks(locations: dict[str, str], max_bytes: int, backups: int) -> Sinks:
    """Open ``{kind: location}`` ("" skipped). Raises OSError naming the file that could
    not be opened (a LogFileError for a link or someone else's file)."""
    sinks = Sinks()
    try:
        for kind, location in locations.items():
            if not location:
                continue
            if location in ("/dev/stdout", "/dev/stderr"):
                stream = sys.stdout if location == "/dev/stdout" else sys.stderr
                writer = BackgroundWriter(stream)
                sinks.outputs.append((kind, writer))
                sinks._closers.append(writer.close)
            else:
                file = RotatingFile(Path(location), max_bytes, backups)
                sinks.outputs.append((kind, file))
                sinks._closers.append(file.close)
    except OSError:
        sinks.close()
        raise
    return sinks
