"""What an SSH session shows and sets that does not need asyncssh: the connection
variables and the MOTD banner. Pure."""

from __future__ import annotations


def connection_env(client_addr: str, server_port: int = 22) -> dict[str, str]:
    """SSH_CLIENT and SSH_CONNECTION from the user's address as the control plane saw it
    ("ip port"); the server end is the workspace's loopback."""
    ip, _, port = client_addr.partition(" ")
    ip, port = ip or "127.0.0.1", port or "0"
    return {
        "SSH_CLIENT": f"{ip} {port} {server_port}",
        "SSH_CONNECTION": f"{ip} {port} 127.0.0.1 {server_port}",
    }


def motd_banner(text: str) -> bytes:
    """MOTD text as a terminal shows it: each line ends in CRLF."""
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return "".join(f"{line}\r\n" for line in lines).encode("utf-8", "replace")
