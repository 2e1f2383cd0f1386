"""The real daemon with CODER_AGENT_AUTH=auto and a fake DMI folder, against the fake
metadata service and the real control plane: detect, exchange, connect, and recover."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.identity.detect import AZURE_ASSET_TAG
from tests.conftest import AgentProcess, ControlPlane, poll_until
from tests.e2e.identity.conftest import identity_config
from tests.fakes.metadata import FakeMetadata

pytestmark = pytest.mark.e2e

DMI = {
    "aws": {"sys_vendor": "Amazon EC2", "product_name": "m5.large", "bios_vendor": "Amazon EC2"},
    "google": {"sys_vendor": "Google", "product_name": "Google Compute Engine"},
    "azure": {
        "sys_vendor": "Microsoft Corporation",
        "product_name": "Virtual Machine",
        "chassis_asset_tag": AZURE_ASSET_TAG,
    },
}
AUTH = {
    "aws": "aws-instance-identity",
    "google": "google-instance-identity",
    "azure": "azure-instance-identity",
}


def _instance_id(fake: FakeMetadata, cloud: str) -> str:
    return {
        "aws": fake.aws.instance_id,
        "google": fake.google.instance_id,
        "azure": fake.azure.vm_id,
    }[cloud]


async def _start(
    cloud: str,
    make_control_plane: Callable[..., Awaitable[ControlPlane]],
    start_agent: Callable[..., Awaitable[AgentProcess]],
    fake: FakeMetadata,
    tmp_path: Path,
) -> tuple[ControlPlane, AgentProcess, str, str]:
    plane = await make_control_plane(identity=identity_config(fake))
    _, user_token = await plane.create_user("owner")
    agents = await plane.create_workspace(
        "owner",
        "ws",
        [{"name": "main", "auth": AUTH[cloud], "instance_id": _instance_id(fake, cloud)}],
    )
    agent_id, _ = agents["main"]
    dmi = tmp_path / "dmi"
    dmi.mkdir()
    for name, value in DMI[cloud].items():
        (dmi / name).write_text(value + "\n")
    env = {
        "CODER_AGENT_URL": plane.url,
        "CODER_AGENT_AUTH": "auto",
        "CODER_AGENT_DMI_DIR": str(dmi),
        "CODER_AGENT_HYPERVISOR_UUID_PATH": str(dmi / "no-hypervisor-uuid"),
        "CODER_AGENT_CLOUD_ID_PATH": str(dmi / "no-cloud-id"),  # not this host's cloud-init
        **fake.env(),
    }
    agent = await start_agent(env)
    return plane, agent, agent_id, user_token


async def _connected(plane: ControlPlane, agent_id: str, token: str) -> dict[str, Any] | None:
    body = await plane.get_agent_json(agent_id, token)
    return body if body["status"] == "connected" else None


@pytest.mark.parametrize("cloud", ["aws", "google", "azure"])
async def test_daemon_detects_the_cloud_exchanges_and_connects(
    cloud: str,
    make_control_plane: Callable[..., Awaitable[ControlPlane]],
    start_agent: Callable[..., Awaitable[AgentProcess]],
    fake_metadata: FakeMetadata,
    tmp_path: Path,
) -> None:
    """auto + DMI -> the cloud's flow -> a session token -> status connected."""
    plane, agent, agent_id, user_token = await _start(
        cloud, make_control_plane, start_agent, fake_metadata, tmp_path
    )
    detected = await agent.wait_for_event("identity.detected", timeout=15)
    assert detected["method"] == AUTH[cloud] and detected["source"] == "dmi"
    await agent.wait_for_event("identity.exchanged", timeout=15, method=AUTH[cloud])
    await poll_until(lambda: _connected(plane, agent_id, user_token), timeout=15)
    # DMI was conclusive: no probe requests reached the metadata service.
    assert not [r for r in fake_metadata.requests if r.path in ("/", "/metadata/versions")]


async def test_revoked_tokens_are_replaced_by_a_new_exchange(
    make_control_plane: Callable[..., Awaitable[ControlPlane]],
    start_agent: Callable[..., Awaitable[AgentProcess]],
    fake_metadata: FakeMetadata,
    tmp_path: Path,
) -> None:
    """The server revokes every token of a running agent: its next connection refresh sees
    the token gone and closes the socket, and the agent proves its identity again by itself
    and returns to connected, with no restart of anything."""
    plane, agent, agent_id, user_token = await _start(
        "aws", make_control_plane, start_agent, fake_metadata, tmp_path
    )
    await poll_until(lambda: _connected(plane, agent_id, user_token), timeout=15)
    exchanges = len(agent.find("identity.exchanged"))
    assert await plane.store.revoke_agent_tokens(agent_id) >= 1
    await agent.wait_for_new_event("identity.exchanged", after=exchanges, timeout=20)
    await poll_until(lambda: _connected(plane, agent_id, user_token), timeout=20)
    # The agent holds a token again, and it is a new one (the old ones were deleted).
    assert await plane.store.revoke_agent_tokens(agent_id) >= 1
    # The IMDSv2 token was reused across exchanges.
    assert len(fake_metadata.seen("/latest/api/token")) == 1


async def test_daemon_without_a_cloud_exits_2_naming_the_setting(
    control_plane: ControlPlane,
    start_agent: Callable[..., Awaitable[AgentProcess]],
    fake_metadata: FakeMetadata,
    tmp_path: Path,
) -> None:
    """auto, no DMI, and no metadata service answering with the right shape: exit code 2."""
    fake_metadata.clouds = frozenset()
    env = {
        "CODER_AGENT_URL": control_plane.url,
        "CODER_AGENT_AUTH": "auto",
        "CODER_AGENT_DMI_DIR": str(tmp_path / "no-dmi"),
        "CODER_AGENT_HYPERVISOR_UUID_PATH": str(tmp_path / "no-dmi" / "uuid"),
        "CODER_AGENT_CLOUD_ID_PATH": str(tmp_path / "no-dmi" / "cloud-id"),
        **fake_metadata.env(),
    }
    agent = await start_agent(env)
    assert await agent.proc.wait() == 2
    await agent.terminate()
    errors = [line for line in agent.raw_lines if line.startswith("wsagent agent: error:")]
    assert len(errors) == 1 and "CODER_AGENT_AUTH" in errors[0]
    assert not any("Traceback" in line for line in agent.raw_lines)


async def test_azure_daemon_echoes_a_server_issued_nonce(
    make_control_plane: Callable[..., Awaitable[ControlPlane]],
    start_agent: Callable[..., Awaitable[AgentProcess]],
    fake_metadata: FakeMetadata,
    tmp_path: Path,
) -> None:
    """With --azure-require-nonce the agent still connects: it asks the server for a nonce
    and passes it to IMDS, which signs it into the document."""
    plane = await make_control_plane(
        identity=identity_config(fake_metadata, azure_require_nonce=True)
    )
    _, user_token = await plane.create_user("owner")
    agents = await plane.create_workspace(
        "owner",
        "ws",
        [{"name": "main", "auth": AUTH["azure"], "instance_id": fake_metadata.azure.vm_id}],
    )
    agent_id, _ = agents["main"]
    env = {
        "CODER_AGENT_URL": plane.url,
        "CODER_AGENT_AUTH": "azure-instance-identity",
        **fake_metadata.env(),
    }
    await start_agent(env)
    await poll_until(lambda: _connected(plane, agent_id, user_token), timeout=15)
    (request,) = fake_metadata.seen("/metadata/attested/document")
    nonce = request.query["nonce"][0]
    assert len(nonce) == 10 and nonce.isdigit()


async def test_failed_exchanges_are_retried_until_the_metadata_service_answers(
    make_control_plane: Callable[..., Awaitable[ControlPlane]],
    start_agent: Callable[..., Awaitable[AgentProcess]],
    fake_metadata: FakeMetadata,
    tmp_path: Path,
) -> None:
    """An explicit method whose metadata service refuses: typed failures, no crash, and a
    connection as soon as the service answers."""
    plane = await make_control_plane(identity=identity_config(fake_metadata))
    _, user_token = await plane.create_user("owner")
    agents = await plane.create_workspace(
        "owner",
        "ws",
        [{"name": "main", "auth": AUTH["google"], "instance_id": fake_metadata.google.instance_id}],
    )
    agent_id, _ = agents["main"]
    fake_metadata.clouds = frozenset()  # every metadata path answers 404
    agent = await start_agent(
        {"CODER_AGENT_URL": plane.url, "CODER_AGENT_AUTH": AUTH["google"], **fake_metadata.env()}
    )
    failed = await agent.wait_for_event("agent.run_failed", timeout=15)
    assert failed["error_type"] == "MetadataServiceError"
    await poll_until(lambda: len(fake_metadata.seen("/computeMetadata/")) >= 2, timeout=15)
    assert agent.proc.returncode is None
    fake_metadata.clouds = frozenset({"google"})
    await poll_until(lambda: _connected(plane, agent_id, user_token), timeout=20)


async def test_daemon_without_dmi_finds_the_cloud_by_probing(
    make_control_plane: Callable[..., Awaitable[ControlPlane]],
    start_agent: Callable[..., Awaitable[AgentProcess]],
    fake_metadata: FakeMetadata,
    tmp_path: Path,
) -> None:
    """A container on a VM: no DMI, so the probe decides by the shape of the replies."""
    plane = await make_control_plane(identity=identity_config(fake_metadata))
    _, user_token = await plane.create_user("owner")
    agents = await plane.create_workspace(
        "owner",
        "ws",
        [{"name": "main", "auth": AUTH["azure"], "instance_id": fake_metadata.azure.vm_id}],
    )
    agent_id, _ = agents["main"]
    fake_metadata.clouds = frozenset({"azure"})
    env = {
        "CODER_AGENT_URL": plane.url,
        "CODER_AGENT_DMI_DIR": str(tmp_path / "no-dmi"),  # CODER_AGENT_AUTH unset: auto
        "CODER_AGENT_HYPERVISOR_UUID_PATH": str(tmp_path / "no-dmi" / "uuid"),
        "CODER_AGENT_CLOUD_ID_PATH": str(tmp_path / "no-dmi" / "cloud-id"),
        **fake_metadata.env(),
    }
    agent = await start_agent(env)
    detected = await agent.wait_for_event("identity.detected", timeout=15)
    assert detected["method"] == AUTH["azure"] and detected["source"] == "probe"
    await poll_until(lambda: _connected(plane, agent_id, user_token), timeout=15)


async def test_daemon_takes_cloud_init_cloud_id_as_a_hint(
    make_control_plane: Callable[..., Awaitable[ControlPlane]],
    start_agent: Callable[..., Awaitable[AgentProcess]],
    fake_metadata: FakeMetadata,
    tmp_path: Path,
) -> None:
    """No DMI (a container), cloud-init said "gce": the agent goes straight to Google's
    flow without probing the metadata address."""
    plane = await make_control_plane(identity=identity_config(fake_metadata))
    _, user_token = await plane.create_user("owner")
    agents = await plane.create_workspace(
        "owner",
        "ws",
        [
            {
                "name": "main",
                "auth": AUTH["google"],
                "instance_id": _instance_id(fake_metadata, "google"),
            }
        ],
    )
    agent_id, _ = agents["main"]
    cloud_id = tmp_path / "cloud-id"
    cloud_id.write_text("gce\n")
    agent = await start_agent(
        {
            "CODER_AGENT_URL": plane.url,
            "CODER_AGENT_AUTH": "auto",
            "CODER_AGENT_DMI_DIR": str(tmp_path / "no-dmi"),
            "CODER_AGENT_HYPERVISOR_UUID_PATH": str(tmp_path / "no-dmi" / "uuid"),
            "CODER_AGENT_CLOUD_ID_PATH": str(cloud_id),
            **fake_metadata.env(),
        }
    )
    detected = await agent.wait_for_event("identity.detected", timeout=15)
    assert detected["method"] == AUTH["google"] and detected["source"] == "cloud-id"
    await poll_until(lambda: _connected(plane, agent_id, user_token), timeout=15)
    assert not [r for r in fake_metadata.requests if r.path in ("/", "/metadata/versions")]


async def test_daemon_honours_aws_ec2_metadata_disabled(
    control_plane: ControlPlane,
    start_agent: Callable[..., Awaitable[AgentProcess]],
    fake_metadata: FakeMetadata,
    tmp_path: Path,
) -> None:
    """DMI says AWS and the AWS metadata service answers, but AWS_EC2_METADATA_DISABLED
    is true: the agent never asks it, and auto ends with one line naming the variable."""
    dmi = tmp_path / "dmi"
    dmi.mkdir()
    for name, value in DMI["aws"].items():
        (dmi / name).write_text(value + "\n")
    fake_metadata.clouds = frozenset({"aws"})
    agent = await start_agent(
        {
            "CODER_AGENT_URL": control_plane.url,
            "CODER_AGENT_AUTH": "auto",
            "CODER_AGENT_DMI_DIR": str(dmi),
            "CODER_AGENT_HYPERVISOR_UUID_PATH": str(dmi / "no-hypervisor-uuid"),
            "CODER_AGENT_CLOUD_ID_PATH": str(dmi / "no-cloud-id"),
            "AWS_EC2_METADATA_DISABLED": "TRUE",
            **fake_metadata.env(),
        }
    )
    assert await agent.proc.wait() == 2
    await agent.terminate()
    errors = [line for line in agent.raw_lines if line.startswith("wsagent agent: error:")]
    assert len(errors) == 1 and "AWS_EC2_METADATA_DISABLED" in errors[0], errors
    assert fake_metadata.seen("/latest") == []
