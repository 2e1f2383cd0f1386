"""A fake cloud metadata service (AWS IMDS, GCE metadata server, Azure IMDS) on loopback.

One ``ThreadingHTTPServer`` on 127.0.0.1:<ephemeral> answers all three clouds by path,
signing with test-made keys (``tests.fakes.cloudkeys``). It runs in a thread so both
sync and async tests, and the real daemon in a subprocess, can talk to it.

Modes (plain attributes, change them at any time):
  aws_mode    "optional" (v1 and v2), "v2-required" (token-less GET -> 401),
              "v1-only" (token PUT -> 405), "put-silent" (the PUT never answers),
              "put-silent-required" (the PUT never answers and token-less GETs get 401:
              a v2-only instance seen from a container behind hop limit 1),
              "reject-tokens" (tokens are issued but every GET carrying one gets 401)
  clouds      which clouds answer at all (others get a bare 404, no flavour header)
  silent      every request hangs until the server closes (a black hole)
  delay       seconds to wait before every answer (a slow service)
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.cloudkeys import (
    AwsMaterial,
    AzureMaterial,
    GoogleMaterial,
    make_aws_material,
    make_azure_material,
    make_google_material,
)

ALL_CLOUDS = frozenset({"aws", "google", "azure"})
HANG_LIMIT = 30.0  # a silent handler gives up after this, so no thread outlives a test run


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


class FakeMetadata:
    def __init__(
        self,
        *,
        aws: AwsMaterial | None = None,
        google: GoogleMaterial | None = None,
        azure: AzureMaterial | None = None,
    ) -> None:
        self.aws = aws or make_aws_material()
        self.google = google or make_google_material()
        self.azure = azure or make_azure_material()
        self.aws_mode = "optional"
        self.clouds: frozenset[str] = ALL_CLOUDS
        self.silent = False
        self.delay = 0.0
        self.requests: list[SeenRequest] = []
        self.imds_tokens: set[str] = set()
        self.google_key_fetches = 0
        self.files: dict[str, bytes] = {}  # extra static paths (e.g. AIA certificates)
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        """The GCE_METADATA_HOST form: host:port, no scheme."""
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables pointing the agent at this fake."""
        return {
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.url,
            "GCE_METADATA_HOST": self.host,
            "CODER_AGENT_AZURE_IMDS_ENDPOINT": self.url,
        }

    def start(self) -> FakeMetadata:
        self._thread.start()
        return self

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def record(self, request: SeenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def seen(self, path_prefix: str) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]

    def hang(self, limit: float = HANG_LIMIT) -> None:
        self._released.wait(limit)

    @property
    def google_keys_url(self) -> str:
        return self.url + "/oauth2/v3/certs"

    def revoke_imds_tokens(self) -> None:
        with self._lock:
            self.imds_tokens.clear()


@contextmanager
def running_fake(**kwargs: Any) -> Iterator[FakeMetadata]:
    fake = FakeMetadata(**kwargs).start()
    try:
        yield fake
    finally:
        fake.close()


def _handler_for(fake: FakeMetadata) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; without this, Nagle + delayed ACK
        # add ~40 ms to every answer and the fake, not the agent, dominates timings.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        # -------------------------------------------------------------- plumbing

        def _send(
            self,
            status: int,
            body: bytes | str = b"",
            ctype: str = "text/plain",
            headers: dict[str, str] | None = None,
        ) -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _json(self, status: int, value: object, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(value), "application/json; charset=utf-8", headers)

        def _dispatch(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            fake.record(SeenRequest(method, parts.path, query, dict(self.headers.items())))
            if fake.silent:
                fake.hang()
                self.close_connection = True
                return
            if fake.delay:
                fake.hang(fake.delay)
            path = parts.path
            if path in fake.files:
                self._send(200, fake.files[path], "application/pkix-cert")
            elif path in ("/oauth2/v3/certs", "/oauth2/v1/certs"):
                # Stands in for www.googleapis.com, for the control plane under test.
                fake.google_key_fetches += 1
                keys = fake.google.jwks() if "v3" in path else fake.google.v1_certs()
                self._json(200, keys, headers={"Cache-Control": "public, max-age=300"})
            elif path.startswith("/latest/") and "aws" in fake.clouds:
                self._aws(method, path)
            elif (path == "/" or path.startswith("/computeMetadata/")) and "google" in fake.clouds:
                self._google(method, path, query)
            elif path.startswith("/metadata/") and "azure" in fake.clouds:
                self._azure(method, path, query)
            else:
                self._send(404, "not found")

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        def do_POST(self) -> None:
            self._dispatch("POST")

        # -------------------------------------------------------------- AWS

        def _aws(self, method: str, path: str) -> None:
            if path == "/latest/api/token":
                if method != "PUT":
                    self._send(405, "")
                    return
                if fake.aws_mode == "v1-only":
                    self._send(405, "")
                    return
                if fake.aws_mode in ("put-silent", "put-silent-required"):
                    fake.hang()
                    self.close_connection = True
                    return
                if "X-Forwarded-For" in self.headers:
                    self._send(403, "")
                    return
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
                if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                    self._send(400, "")
                    return
                token = "AQAE" + secrets.token_urlsafe(40)
                with fake._lock:
                    fake.imds_tokens.add(token)
                self._send(200, token, headers={"X-aws-ec2-metadata-token-ttl-seconds": ttl})
                return
            presented = self.headers.get("X-aws-ec2-metadata-token")
            if presented is not None and fake.aws_mode == "reject-tokens":
                self._send(401, "")
                return
            if presented is not None and presented not in fake.imds_tokens:
                self._send(401, "")
                return
            if presented is None and fake.aws_mode in ("v2-required", "put-silent-required"):
                self._send(401, "")
                return
            doc = fake.aws.document()
            if path == "/latest/dynamic/instance-identity/document":
                self._send(200, doc)
            elif path == "/latest/dynamic/instance-identity/signature":
                self._send(200, fake.aws.sign(doc))
            else:
                self._send(404, "")

        # -------------------------------------------------------------- Google

        def _google(self, method: str, path: str, query: dict[str, list[str]]) -> None:
            flavor = {"Metadata-Flavor": "Google"}
            if self.headers.get("Metadata-Flavor") != "Google":
                self._send(403, "Missing required header: Metadata-Flavor", headers=flavor)
                return
            if path == "/":
                self._send(200, "computeMetadata/\n", headers=flavor)
                return
            if path != "/computeMetadata/v1/instance/service-accounts/default/identity":
                self._send(404, "not found", headers=flavor)
                return
            audience = query.get("audience", [""])[0]
            if not audience:
                self._send(400, "non-empty audience parameter required", headers=flavor)
                return
            claims = fake.google.claims(audience)
            if query.get("format", [""])[0] != "full":
                del claims["google"]  # format=standard omits the instance details
            self._send(200, fake.google.mint(claims), headers=flavor)

        # -------------------------------------------------------------- Azure

        def _azure(self, method: str, path: str, query: dict[str, list[str]]) -> None:
            if self.headers.get("Metadata") != "true":
                self._json(
                    400,
                    {"error": "Bad request. Required metadata header not specified"},
                )
                return
            if path == "/metadata/versions":
                self._json(200, {"apiVersions": ["2018-10-01", "2020-09-01", "2021-02-01"]})
                return
            if path != "/metadata/attested/document":
                self._json(404, {"error": "Not found"})
                return
            if not query.get("api-version"):
                self._json(400, {"error": "Bad request. api-version was not specified"})
                return
            nonce = query.get("nonce", [None])[0]
            self._json(200, fake.azure.response(nonce))

    return Handler


class WrongShapeServer:
    """Something that is listening on "the metadata address" but is not a metadata
    service: a plain web server answering every request with an HTML page."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _page(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                body = b"<html><body>It works!</body></html>\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = _page

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
