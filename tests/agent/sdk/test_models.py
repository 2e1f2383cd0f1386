"""Round trips and strict decoding for every wire model."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.sdk import codec
from agent.sdk.errors import DecodeError
from agent.sdk.extensions import (
    ListeningPortsRequest,
    ListeningPortsResponse,
    PTYRequest,
    decode_extension,
)
from agent.sdk.jsonstream import JSONStream
from agent.sdk.models import (
    AuthenticateResponse,
    AWSInstanceIdentityToken,
    AzureInstanceIdentityToken,
    ErrorResponse,
    GitAuthResponse,
    GitSSHKey,
    GoogleInstanceIdentityToken,
    Healthcheck,
    Metadata,
    PostAppHealthsRequest,
    PostLifecycleRequest,
    PostStartupRequest,
    Stats,
    StatsResponse,
    WorkspaceApp,
)
from agent.sdk.pty import ReconnectingPTYInit, ReconnectingPTYRequest
from agent.sdk.tailnet import DERPMap, DERPNode, DERPRegion, Node
from agent.sdk.workspaceagents import ListeningPort, WorkspaceAgent, WorkspaceAgentConnectionInfo
from agent.sdk.workspaceagents import ListeningPortsResponse as PortsResponse

APP_ID = "497f6eca-6276-4993-bfeb-53cbbbba6f08"
NOW = datetime(2023, 3, 2, 12, 0, 0, 123456, tzinfo=UTC)

DERP = DERPMap(
    regions={
        999: DERPRegion(
            region_id=999,
            region_code="coder",
            region_name="Coder Embedded Relay",
            embedded_relay=True,
            nodes=(
                DERPNode(
                    name="999a",
                    region_id=999,
                    host_name="127.0.0.1",
                    derp_port=3000,
                    force_http=True,
                ),
            ),
        )
    }
)
APP = WorkspaceApp(
    id=APP_ID,
    url="http://localhost:8080",
    slug="web",
    display_name="Web",
    healthcheck=Healthcheck(url="http://localhost:8080/healthz", interval=5, threshold=3),
    health="initializing",
)


def roundtrip_cases() -> list[tuple[object, object]]:
    return [
        (
            AWSInstanceIdentityToken(signature="sig", document='{"instanceId":"i-1"}'),
            AWSInstanceIdentityToken.from_json,
        ),
        (
            AzureInstanceIdentityToken(signature="c2ln", encoding="pkcs7"),
            AzureInstanceIdentityToken.from_json,
        ),
        (
            GoogleInstanceIdentityToken(json_web_token="a.b.c"),
            GoogleInstanceIdentityToken.from_json,
        ),
        (AuthenticateResponse(session_token="tok-123"), AuthenticateResponse.from_json),
        (
            Metadata(
                git_auth_configs=1,
                vscode_port_proxy_uri="http://{{port}}--a--b--c.localhost:3000",
                apps=(APP,),
                derpmap=DERP,
                environment_variables={"FOO": "bar"},
                startup_script="echo hi",
                startup_script_timeout_ns=5_000_000_000,
                directory="~/src",
                motd_file="/etc/motd",
            ),
            Metadata.from_json,
        ),
        (
            PostStartupRequest(version="v0.1.0", expanded_directory="/home/u"),
            PostStartupRequest.from_json,
        ),
        (PostLifecycleRequest(state="ready"), PostLifecycleRequest.from_json),
        (PostAppHealthsRequest(healths={APP_ID: "healthy"}), PostAppHealthsRequest.from_json),
        (
            Stats(
                conns_by_proto={"TCP": 1},
                num_comms=1,
                rx_packets=2,
                rx_bytes=3,
                tx_packets=4,
                tx_bytes=5,
            ),
            Stats.from_json,
        ),
        (StatsResponse(report_interval_ns=600_000_000_000), StatsResponse.from_json),
        (GitAuthResponse(username="u", password="p", url=""), GitAuthResponse.from_json),
        (GitSSHKey(public_key="ssh-ed25519 AAAA", private_key="-----BEGIN"), GitSSHKey.from_json),
        (ErrorResponse(message="nope", detail="because"), ErrorResponse.from_json),
        (WorkspaceAgentConnectionInfo(derp_map=DERP), WorkspaceAgentConnectionInfo.from_json),
        (PortsResponse(ports=(ListeningPort("python3", "tcp", 8080),)), PortsResponse.from_json),
        (
            WorkspaceAgent(
                id=APP_ID,
                created_at=NOW,
                updated_at=NOW,
                status="connected",
                lifecycle_state="ready",
                name="main",
                resource_id=APP_ID,
                architecture="amd64",
                operating_system="linux",
                version="v0.1.0",
                connection_timeout_seconds=120,
                troubleshooting_url="https://example.com",
                startup_script_timeout_seconds=300,
                login_before_ready=True,
                first_connected_at=NOW,
                last_connected_at=NOW,
                apps=(APP,),
            ),
            WorkspaceAgent.from_json,
        ),
    ]


@pytest.mark.parametrize(("model", "decode"), roundtrip_cases(), ids=lambda v: type(v).__name__)
def test_roundtrip(model: object, decode: object) -> None:
    """Every model survives encode → bytes → decode unchanged."""
    wire = codec.dumps(model.to_json())  # type: ignore[attr-defined]
    value = codec.loads("test", wire)
    assert decode(value, "test") == model  # type: ignore[operator]


def test_node_roundtrip() -> None:
    node = Node.new_agent_node(999, NOW)
    assert Node.from_json(json.loads(codec.dumps(node.to_json())), "test") == node
    assert node.key.startswith("nodekey:") and len(node.key) == len("nodekey:") + 64
    assert node.addresses == ("fd7a:115c:a1e0:49d6:b259:b7ac:b1b2:48f4/128",)


def test_derp_map_uses_tailscale_casing() -> None:
    wire = DERP.to_json()
    region = wire["Regions"]["999"]
    assert set(region) == {"EmbeddedRelay", "RegionID", "RegionCode", "RegionName", "Nodes"}
    assert region["Nodes"][0] == {
        "Name": "999a",
        "RegionID": 999,
        "HostName": "127.0.0.1",
        "DERPPort": 3000,
        "ForceHTTP": True,
    }


def test_app_health_key_is_capitalised() -> None:
    assert PostAppHealthsRequest({APP_ID: "healthy"}).to_json() == {"Healths": {APP_ID: "healthy"}}
    # Servers decode like Go: any case.
    assert PostAppHealthsRequest.from_json({"healths": {APP_ID: "healthy"}}, "t").healths


def test_durations_are_integer_nanoseconds() -> None:
    md = Metadata(startup_script_timeout_ns=1_500_000_000)
    assert md.to_json()["startup_script_timeout"] == 1_500_000_000
    assert md.startup_script_timeout == 1.5


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({**Metadata().to_json(), "git_auth_configs": "1"}, "$.git_auth_configs"),
        ({**Metadata().to_json(), "apps": [{"id": "not-a-uuid"}]}, "$.apps[0].id"),
        ({**Metadata().to_json(), "startup_script_timeout": 1.5}, "$.startup_script_timeout"),
        ({**Metadata().to_json(), "environment_variables": {"A": 1}}, "$.environment_variables.A"),
        ({**Metadata().to_json(), "directory": None}, "$.directory"),
        ([], "$"),
    ],
)
def test_metadata_decode_names_field_path(body: object, path: str) -> None:
    with pytest.raises(DecodeError) as info:
        Metadata.from_json(body, "GET /api/v2/workspaceagents/me/metadata")
    assert info.value.path == path
    assert "GET /api/v2/workspaceagents/me/metadata" in str(info.value)


def test_metadata_accepts_null_collections() -> None:
    body = {**Metadata().to_json(), "apps": None, "environment_variables": None, "derpmap": None}
    assert Metadata.from_json(body, "t") == Metadata()


DECODERS = [m[1] for m in roundtrip_cases()]


@given(st.binary(max_size=256))
def test_any_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    """Property: arbitrary bytes either decode or raise the one DecodeError."""
    for decode in DECODERS:
        try:
            decode(codec.loads("fuzz", data), "fuzz")  # type: ignore[operator]
        except DecodeError:
            pass


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values)
def test_any_json_decodes_or_raises_decode_error(value: object) -> None:
    for decode in DECODERS:
        try:
            decode(value, "fuzz")  # type: ignore[operator]
        except DecodeError:
            pass


def test_pty_init_frame_is_little_endian_length_prefixed() -> None:
    init = ReconnectingPTYInit(id=APP_ID, height=24, width=80, command="bash")
    frame = init.encode_frame()
    length = int.from_bytes(frame[:2], "little")
    assert json.loads(frame[2 : 2 + length]) == {
        "ID": APP_ID,
        "Height": 24,
        "Width": 80,
        "Command": "bash",
    }
    assert ReconnectingPTYInit.split_frame(frame + b"rest") == (init, b"rest")
    assert ReconnectingPTYInit.split_frame(frame[:5]) is None


def test_pty_request_resize_needs_both_dimensions() -> None:
    assert ReconnectingPTYRequest(data="x", height=10).resize is None
    assert ReconnectingPTYRequest(height=10, width=20).resize == (10, 20)
    with pytest.raises(DecodeError):
        ReconnectingPTYRequest.from_json({"height": 70000})


def test_json_stream_splits_and_joins_values() -> None:
    stream = JSONStream("t")
    assert stream.feed(b'{"a":"}\\"{"}[1,') == [{"a": '}"{'}]
    assert stream.feed(b"2]\n{") == [[1, 2]]
    assert stream.feed(b'"b":[{}]}') == [{"b": [{}]}]


def test_json_stream_rejects_scalars_and_oversize() -> None:
    with pytest.raises(DecodeError):
        JSONStream("t").feed(b"42")
    with pytest.raises(DecodeError):
        JSONStream("t", max_value_bytes=16).feed(b'{"a":"' + b"x" * 32)


@given(
    st.lists(json_values.filter(lambda v: isinstance(v, (list, dict))), max_size=5),
    st.integers(1, 7),
)
def test_json_stream_any_chunking(values: list[object], chunk: int) -> None:
    """However the bytes are split, the same values come out."""
    data = b"".join(json.dumps(v).encode() for v in values)
    stream = JSONStream("t")
    out: list[object] = []
    for i in range(0, len(data), chunk):
        out.extend(stream.feed(data[i : i + chunk]))
    assert out == values


@pytest.mark.parametrize(
    "text",
    [
        '{"version":"v1\\ud800"}',
        '{"a":["ok",{"\\udfff":1}]}',
        '["\\ud83d"]',
        '{"x":"\\uDC00 tail"}',
    ],
)
def test_lone_surrogates_are_refused_by_every_decoder(text: str) -> None:
    with pytest.raises(DecodeError, match="surrogate"):
        codec.loads("t", text.encode())
    with pytest.raises(DecodeError, match="surrogate"):
        JSONStream("t").feed(text.encode())
    with pytest.raises(DecodeError, match="surrogate"):
        ReconnectingPTYInit.split_frame(len(text).to_bytes(2, "little") + text.encode())


def test_surrogate_pairs_and_escaped_backslashes_decode() -> None:
    text = '{"a":"\\ud83d\\ude00","b":"\\\\ud800"}'
    assert codec.loads("t", text) == {"a": "\U0001f600", "b": "\\ud800"}


def test_extensions_roundtrip() -> None:
    for ext in (
        PTYRequest(session_id="abc"),
        ListeningPortsRequest(request_id="r1"),
        ListeningPortsResponse(request_id="r1", ports=(ListeningPort("nginx", "tcp", 80),)),
    ):
        assert decode_extension(json.loads(json.dumps(ext.to_json()))) == ext
    assert decode_extension({"type": "future_thing"}) == "future_thing"


def test_metadata_missing_fields_take_zero_values_like_go() -> None:
    """A partial body decodes (Go's zero values); a present field must still be typed."""
    md = Metadata.from_json({"directory": "~/src"}, "t")
    assert md == Metadata(directory="~/src")
    with pytest.raises(DecodeError) as info:
        Metadata.from_json({"directory": "~/src", "motd_file": 3}, "t")
    assert info.value.path == "$.motd_file"
