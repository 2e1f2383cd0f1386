"""``wsagent gitssh -- <ssh args>``: the GIT_SSH_COMMAND of every session (docs/protocol.md,
"Git helpers in the workspace").

Fetches the workspace owner's git SSH key from the control plane, writes it to a private
temp file (0600, removed on every exit path, signals included) and runs ``ssh`` with the
user's own identity files first (what ``ssh -G`` resolves for the same arguments), then
that key. ssh's exit code is passed through; on 255 the public key is printed with a hint.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Final, TextIO

from agent.sdk.errors import WsagentError
from agent.sdk.models import GitSSHKey

# OpenSSH's defaults, used when ``ssh -G`` cannot tell us.
FALLBACK_IDENTITIES: Final = (
    "~/.ssh/id_rsa",
    "~/.ssh/id_dsa",
    "~/.ssh/id_ecdsa",
    "~/.ssh/id_ecdsa_sk",
    "~/.ssh/id_ed25519",
    "~/.ssh/id_ed25519_sk",
    "~/.ssh/id_xmss",
)
HELP: Final = """usage: wsagent gitssh [--] <ssh arguments>

The GIT_SSH_COMMAND the agent sets in every session: git runs it in place of ssh.
It fetches the workspace owner's git SSH key from the control plane (with the
session's CODER_AGENT_URL and agent token), writes it to a private temporary file
(removed on exit) and runs ssh with your own identity files first, then that key.
ssh's exit code is passed through; when ssh fails the public key to add to the
git host is printed.
"""
SSH_G_TIMEOUT: Final = 10.0
SSH_FAILED: Final = 255
EXIT_FAILED: Final = 1


class GitSSHError(WsagentError):
    """The key could not be fetched or ssh could not be started."""


def parse_identity_files(ssh_g_output: str) -> list[str]:
    """``identityfile`` entries of ``ssh -G`` output, in ssh's order."""
    found: list[str] = []
    for line in ssh_g_output.splitlines():
        key, _, value = line.strip().partition(" ")
        if key.lower() == "identityfile" and value.strip():
            found.append(value.strip())
    return found


def expand_home(path: str, home: str) -> str:
    if home and (path == "~" or path.startswith("~/")):
        return home + path[1:]
    return path


def user_identity_files(args: Sequence[str], env: Mapping[str, str], ssh: str = "ssh") -> list[str]:
    """The user's own key files that exist, as ssh would try them for ``args``."""
    candidates: list[str] = list(FALLBACK_IDENTITIES)
    try:
        result = subprocess.run(
            [ssh, "-G", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=SSH_G_TIMEOUT,
            env=dict(env),
            check=False,
        )
        if result.returncode == 0:
            candidates = parse_identity_files(result.stdout.decode("utf-8", "replace"))
    except (OSError, subprocess.TimeoutExpired):
        pass
    home = env.get("HOME", "")
    files = [expand_home(c, home) for c in candidates]
    return [f for f in dict.fromkeys(files) if os.path.isfile(f)]


def ssh_command(
    ssh: str, user_keys: Sequence[str], temp_key: str, args: Sequence[str]
) -> list[str]:
    identity: list[str] = []
    for key in [*user_keys, temp_key]:
        identity += ["-i", key]
    return [ssh, *identity, *args]


def failure_hint(public_key: str) -> str:
    return (
        "wsagent gitssh: ssh failed (exit 255). If the server rejected the key, add this\n"
        "public key to your git provider:\n\n"
        f"{public_key.strip()}\n\n"
        "  GitHub: https://github.com/settings/ssh/new\n"
        "  GitLab: https://gitlab.com/-/profile/keys\n"
    )


async def _fetch_key(env: Mapping[str, str]) -> GitSSHKey:
    from agent.client import ControlPlaneClient, TokenHolder, tls_context

    url = env.get("CODER_AGENT_URL", "")
    token = env.get("CODER_AGENT_TOKEN", "")
    if not url or not token:
        raise GitSSHError("CODER_AGENT_URL and CODER_AGENT_TOKEN must be set")
    insecure = env.get("CODER_AGENT_INSECURE_SKIP_TLS_VERIFY", "").lower() in (
        "1",
        "true",
        "yes",
        "on",
    )
    verify = tls_context(
        insecure_skip_verify=insecure, ca_file=env.get("CODER_AGENT_TLS_CA_FILE", "")
    )
    async with ControlPlaneClient(url, TokenHolder(token), verify=verify) as client:
        return await client.git_ssh_key()


def write_temp_key(private_key: str) -> str:
    fd, path = tempfile.mkstemp(prefix="wsagent-gitsshkey-")
    try:
        os.fchmod(fd, 0o600)
        data = private_key if private_key.endswith("\n") else private_key + "\n"
        os.write(fd, data.encode())
    finally:
        os.close(fd)
    return path


def main(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    stderr: TextIO | None = None,
    ssh: str = "ssh",
) -> int:
    env = os.environ if env is None else env
    stderr = sys.stderr if stderr is None else stderr
    args = list(argv)
    if args in (["-h"], ["--help"]):
        # ssh itself has no --help, so this is a person asking, not git.
        print(HELP, end="")
        return 0
    if args and args[0] == "--":
        args = args[1:]
    child: subprocess.Popen[bytes] | None = None
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if child is None:
            raise SystemExit(128 + signum)  # the finally below still removes the key
        child.send_signal(signum)

    previous = {
        s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    }
    key_path = ""
    try:
        try:
            key = asyncio.run(_fetch_key(env))
        except WsagentError as exc:
            print(f"wsagent gitssh: fetching the git SSH key: {exc}", file=stderr)
            return EXIT_FAILED
        key_path = write_temp_key(key.private_key)
        command = ssh_command(ssh, user_identity_files(args, env, ssh), key_path, args)
        try:
            child = subprocess.Popen(command, env=dict(env))
        except OSError as exc:
            print(f"wsagent gitssh: cannot run {ssh}: {exc}", file=stderr)
            return EXIT_FAILED
        code = child.wait()
        if code == SSH_FAILED:
            print(failure_hint(key.public_key), file=stderr, end="")
        if code < 0:
            return 128 - code
        return code
    finally:
        if key_path:
            try:
                os.unlink(key_path)
            except FileNotFoundError:
                pass
        for signum, handler in previous.items():
            signal.signal(signum, handler)
