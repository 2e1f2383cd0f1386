"""GIT_ASKPASS mode: git runs ``wsagent "Username for 'https://host': "`` (docs/protocol.md,
"Git helpers in the workspace").

We ask the control plane for the user's credential for that URL. When the user has not
linked the provider yet, the control plane answers with a URL to open; we print it and
wait (``listen``) until the credential exists, within an overall deadline.

This runs once per git prompt, so start-up is kept lean: the standard library's
http.client instead of httpx, and nothing else from the agent but the error base class.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TextIO
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from agent.sdk.errors import WsagentError

PROMPT_PREFIXES: Final = ("Username ", "Password ")
DEFAULT_DEADLINE: Final = 300.0
REQUEST_TIMEOUT: Final = 10.0
POLL_FLOOR: Final = 0.25
POLL_CEILING: Final = 10.0
MAX_BODY: Final = 1 << 20
TRUTHY: Final = ("1", "true", "yes", "on")  # as agent.config.parse_bool
EXIT_FAILED: Final = 1


class AskpassError(WsagentError):
    """The prompt could not be answered; the message is shown to the user."""


@dataclass(frozen=True, slots=True)
class Credential:
    username: str = ""
    password: str = ""
    url: str = ""


def is_askpass(argv: Sequence[str], env: Mapping[str, str]) -> bool:
    """git calls askpass with exactly one prompt argument and sets GIT_PREFIX (possibly
    empty, so presence is what counts)."""
    return len(argv) == 1 and argv[0].startswith(PROMPT_PREFIXES) and "GIT_PREFIX" in env


def parse_prompt(prompt: str) -> tuple[str, str]:
    """``("user", "https://host")`` from ``Password for 'https://user@host': ``."""
    words = prompt.split()
    if len(words) < 3:
        raise AskpassError(f"unexpected askpass prompt {prompt!r}")
    raw = words[2].lstrip("'\"").rstrip("'\":")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AskpassError(f"askpass prompt has no http(s) URL: {prompt!r}")
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = unquote(userinfo.partition(":")[0]) if userinfo else ""
    return user, urlunsplit((parts.scheme, hostport, parts.path, "", ""))


def answer(prompt_user: str, credential: Credential) -> str:
    """What git gets: a token-only credential is the username for both prompts; otherwise
    the username when the prompt names no user yet, else the password."""
    if not credential.password:
        return credential.username
    return credential.password if prompt_user else credential.username


def poll_delays(floor: float = POLL_FLOOR, ceiling: float = POLL_CEILING) -> Callable[[], float]:
    current = floor

    def next_delay() -> float:
        nonlocal current
        delay, current = current, min(current * 2, ceiling)
        return delay

    return next_delay


class GitAuthClient:
    """``GET /api/v2/workspaceagents/me/gitauth`` over http.client, one request at a time."""

    def __init__(self, base_url: str, token: str, env: Mapping[str, str]) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AskpassError(f"CODER_AGENT_URL is not an http(s) URL: {base_url!r}")
        self._parts = parts
        self._token = token
        self._env = env

    def _connection(self, timeout: float) -> Any:
        import http.client

        host, port = self._parts.hostname or "", self._parts.port
        if self._parts.scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=timeout)
        import ssl

        context = ssl.create_default_context(
            cafile=self._env.get("CODER_AGENT_TLS_CA_FILE") or None
        )
        skip = self._env.get("CODER_AGENT_INSECURE_SKIP_TLS_VERIFY", "").strip().lower()
        if skip in TRUTHY:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=context)

    def _origin(self) -> str:
        return f"{self._parts.scheme}://{self._parts.netloc}"

    def git_auth(self, url: str, *, listen: bool, timeout: float) -> tuple[int, dict[str, Any]]:
        path = self._parts.path.rstrip("/") + "/api/v2/workspaceagents/me/gitauth"
        # ``listen`` is a presence flag on the server, so it has no value.
        target = f"{path}?url={quote(url, safe='')}" + ("&listen" if listen else "")
        conn = self._connection(timeout)
        try:
            conn.request(
                "GET",
                target,
                headers={"Coder-Session-Token": self._token, "Accept": "application/json"},
            )
            response = conn.getresponse()
            data = response.read(MAX_BODY)
            status = response.status
        except OSError as exc:  # includes socket timeouts and TLS errors
            raise AskpassError(f"GET {self._origin()}{target}: {_describe(exc)}") from exc
        except Exception as exc:  # http.client.HTTPException and friends
            raise AskpassError(f"GET {self._origin()}{target}: {_describe(exc)}") from exc
        finally:
            conn.close()
        try:
            body = json.loads(data) if data.strip() else {}
        except ValueError:
            body = {"message": data[:200].decode("utf-8", "replace")}
        return status, body if isinstance(body, dict) else {}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _credential(body: Mapping[str, Any]) -> Credential:
    return Credential(
        username=str(body.get("username") or ""),
        password=str(body.get("password") or ""),
        url=str(body.get("url") or ""),
    )


def _error_text(status: int, body: Mapping[str, Any]) -> str:
    message = str(body.get("message") or f"unexpected status code {status}")
    detail = body.get("detail")
    return f"{message}: {detail}" if detail else message


def deadline_seconds(env: Mapping[str, str]) -> float:
    """``CODER_AGENT_GIT_ASKPASS_DEADLINE``, read here: askpass runs in git's process, which
    inherits the variable from the agent's environment through the user's shell."""
    raw = env.get("CODER_AGENT_GIT_ASKPASS_DEADLINE", "")
    if not raw:
        return DEFAULT_DEADLINE
    from agent.sdk.settings import parse_duration  # only paid for when the variable is set

    return parse_duration(raw, "CODER_AGENT_GIT_ASKPASS_DEADLINE")


def fetch_credential(
    client: GitAuthClient,
    url: str,
    *,
    deadline: float,
    stderr: TextIO,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Credential:
    """Ask once; if the user must authenticate first, say where and wait for it."""
    status, body = client.git_auth(
        url, listen=False, timeout=max(0.1, min(REQUEST_TIMEOUT, deadline - clock()))
    )
    if status != 200:
        raise AskpassError(_error_text(status, body))
    credential = _credential(body)
    if not credential.url:
        return credential
    print(f"You must authenticate with git to continue: {credential.url}", file=stderr)
    print("Open that URL in your browser and sign in; git continues once you have.", file=stderr)
    stderr.flush()
    next_delay = poll_delays()
    last_error = ""
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            raise AskpassError(
                "timed out waiting for git authentication"
                + (f" (last error: {last_error})" if last_error else "")
            )
        try:
            status, body = client.git_auth(url, listen=True, timeout=remaining)
        except AskpassError as exc:
            last_error = str(exc)
        else:
            if status == 200 and not _credential(body).url:
                return _credential(body)
            last_error = _error_text(status, body)
        sleep(min(next_delay(), max(deadline - clock(), 0.0)))


def main(
    prompt: str,
    env: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    env = os.environ if env is None else env
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        base_url = env.get("CODER_AGENT_URL", "")
        token = env.get("CODER_AGENT_TOKEN", "")
        if not base_url or not token:
            raise AskpassError("CODER_AGENT_URL and CODER_AGENT_TOKEN must be set")
        deadline = time.monotonic() + deadline_seconds(env)
        prompt_user, url = parse_prompt(prompt)
        client = GitAuthClient(base_url, token, env)
        credential = fetch_credential(client, url, deadline=deadline, stderr=stderr)
    except WsagentError as exc:
        print(f"wsagent askpass: {exc}", file=stderr)
        return EXIT_FAILED
    print(answer(prompt_user, credential), file=stdout)
    stdout.flush()
    return 0
