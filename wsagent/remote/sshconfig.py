"""The managed block in ``~/.ssh/config`` and the owned known_hosts file. Pure text.

``wsagent config-ssh`` owns exactly the lines between its two markers; running it again
replaces that block in place (or appends it the first time) and leaves every other byte
of the file as it was. The known_hosts file is wsagent's own: one line per agent.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

START: Final = "# ------------START-WSAGENT-----------"
END: Final = "# ------------END-WSAGENT------------"
NOTICE: Final = (
    "# Written by `wsagent config-ssh`; edits inside this block are lost when it runs again."
)
HOST_PREFIX: Final = "wsagent."


@dataclass(frozen=True, slots=True)
class HostEntry:
    alias: str  # e.g. wsagent.dev or wsagent.dev.main
    spec: str  # what `wsagent ssh --stdio` is given: dev or dev.main


def proxy_command(launcher: Sequence[str], url: str, spec: str) -> str:
    """The ProxyCommand: ssh runs it through the shell, and expands ``%`` itself."""
    argv = [*launcher, "ssh", "--stdio", "--url", url, spec]
    return shlex.join(argv).replace("%", "%%")


def render_block(
    entries: Iterable[HostEntry], launcher: Sequence[str], url: str, known_hosts: str
) -> str:
    lines = [START, NOTICE]
    for entry in entries:
        lines += [
            f"Host {entry.alias}",
            f"  ProxyCommand {proxy_command(launcher, url, entry.spec)}",
            f"  UserKnownHostsFile {_ssh_quote(known_hosts)}",
            "  StrictHostKeyChecking yes",
            "  UpdateHostKeys no",
            "  ConnectTimeout 0",
            "",
        ]
    if lines[-1] == "":
        lines.pop()
    lines.append(END)
    return "\n".join(lines) + "\n"


def _ssh_quote(value: str) -> str:
    # ssh_config takes double quotes around arguments with spaces; %-expansion applies.
    value = value.replace("%", "%%")
    return f'"{value}"' if any(c.isspace() for c in value) else value


def replace_block(text: str, block: str) -> str:
    """``text`` with its managed block replaced by ``block`` (appended if it has none).

    Raises ValueError when the markers are unbalanced: guessing would risk the user's
    own lines."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == START]
    ends = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == END]
    if not starts and not ends:
        if not text:
            return block
        separator = "" if text.endswith("\n") else "\n"
        return text + separator + "\n" + block
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError("the wsagent block's markers are unbalanced; fix or remove them")
    before = "".join(lines[: starts[0]])
    after = "".join(lines[ends[0] + 1 :])
    return before + block + after


def known_hosts_line(alias: str, public_key: str) -> str:
    """``alias keytype base64`` (a comment in the published key is dropped)."""
    fields = public_key.split()
    if len(fields) < 2:
        raise ValueError(f"not an OpenSSH public key: {public_key[:40]!r}")
    return f"{alias} {fields[0]} {fields[1]}"


def upsert_known_host(text: str, alias: str, public_key: str) -> str:
    """``text`` (a known_hosts file) with ``alias``'s line set to ``public_key``."""
    kept = [line for line in text.splitlines() if line.split(" ", 1)[0] != alias]
    kept.append(known_hosts_line(alias, public_key))
    return "\n".join(kept) + "\n"
