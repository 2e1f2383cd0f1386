"""TLS: the control plane serves HTTPS and the agent verifies it unless told otherwise."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import agent_env, poll_until

pytestmark = pytest.mark.e2e


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wsagent test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (
        directory / "ca.pem",
        directory / "cert.pem",
        directory / "key.pem",
    )
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, cert_file, key_file


async def test_agent_connects_over_verified_tls_and_refuses_unknown_ca(
    make_control_plane: Any, start_agent: Any, tmp_path: Path
) -> None:
    ca_file, cert_file, key_file = make_ca_and_server_cert(tmp_path)
    cp = await make_control_plane(tls_cert=cert_file, tls_key=key_file)
    assert cp.url.startswith("https://")
    _, user_token = await cp.create_user("alice")
    agents = await cp.create_workspace("alice", "dev")
    agent_id, agent_token = agents["main"]
    verify = ssl.create_default_context(cafile=str(ca_file))

    async def status() -> str:
        async with httpx.AsyncClient(base_url=cp.url, verify=verify, timeout=10) as client:
            response = await client.get(
                f"/api/v2/workspaceagents/{agent_id}",
                headers={"Coder-Session-Token": user_token},
            )
        return str(response.json()["status"])

    # Without the CA the agent must refuse the certificate and keep retrying.
    untrusting = await start_agent(agent_env(cp.url, agent_token, tmp_path / "logs1"))
    failure = await untrusting.wait_for_event("agent.run_failed", timeout=15)
    assert "CERTIFICATE_VERIFY_FAILED" in failure["error"] or "certificate" in failure["error"]
    assert failure["error_type"] == "TLSError"  # told apart from a refused connection
    assert await status() == "connecting"
    assert await untrusting.terminate() == 0

    trusting = await start_agent(
        agent_env(cp.url, agent_token, tmp_path / "logs2", CODER_AGENT_TLS_CA_FILE=str(ca_file))
    )
    await poll_until(lambda: _is(status, "connected"), timeout=15, message="no TLS connection")
    assert await trusting.terminate() == 0


async def _is(status: Any, wanted: str) -> bool:
    return bool(await status() == wanted)
