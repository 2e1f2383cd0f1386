"""A git smart-HTTP server on 127.0.0.1 for tests: aiohttp in front of the real
``git http-backend`` CGI, demanding HTTP basic auth like a forge does."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
Check = Callable[[str, str], bool]


def git_backend() -> str | None:
    if Path(HTTP_BACKEND).exists():
        return HTTP_BACKEND
    found = shutil.which("git")
    if found is None:
        return None
    exec_path = subprocess.run([found, "--exec-path"], capture_output=True, text=True, check=False)
    candidate = Path(exec_path.stdout.strip()) / "git-http-backend"
    return str(candidate) if candidate.exists() else None


def make_repo(root: Path, name: str = "repo.git") -> Path:
    """A bare repository with one commit holding README."""
    work = root / "work"
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(root),
        "PATH": "/usr/bin:/bin",
    }

    def run(*args: str) -> None:
        subprocess.run(["git", *args], cwd=work, env=env, check=True, capture_output=True)

    work.mkdir(parents=True)
    run("init", "-q", "-b", "main")
    (work / "README").write_text("hello from the test repo\n")
    run("add", "README")
    run("commit", "-q", "-m", "first")
    bare = root / name
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], env=env, check=True)
    return bare


class GitHTTPServer:
    def __init__(self, project_root: Path, check: Check) -> None:
        self.project_root = project_root
        self.check = check
        self.attempts: list[tuple[str, str]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        user, password = _basic_auth(request.headers.get("Authorization", ""))
        if user or password:
            self.attempts.append((user, password))
        if not self.check(user, password):
            return web.Response(
                status=401, headers={"WWW-Authenticate": 'Basic realm="test"'}, text="auth"
            )
        backend = git_backend()
        assert backend is not None
        env = {
            "GIT_PROJECT_ROOT": str(self.project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": request.method,
            "PATH_INFO": request.path,
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "REMOTE_USER": user,
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": request.headers.get("Content-Encoding", ""),
            "PATH": "/usr/bin:/bin",
        }
        body = await request.read()
        env["CONTENT_LENGTH"] = str(len(body))
        proc = await asyncio.create_subprocess_exec(
            backend,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(body), 30)
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.partition(b"\n\n")
        status = 200
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers[key.strip()] = value.strip()
        return web.Response(status=status, headers=headers, body=payload)


def _basic_auth(header: str) -> tuple[str, str]:
    if not header.startswith("Basic "):
        return "", ""
    decoded = base64.b64decode(header[6:]).decode()
    user, _, password = decoded.partition(":")
    return user, password


@asynccontextmanager
async def serve_git(project_root: Path, check: Check) -> AsyncIterator[GitHTTPServer]:
    server = GitHTTPServer(project_root, check)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    # Bodies are handed to git http-backend as sent; it undoes gzip itself.
    runner = web.AppRunner(app, auto_decompress=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()
