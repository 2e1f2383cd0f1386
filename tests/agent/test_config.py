"""agent.config: settings from flags and environment; every bad one is a ConfigError naming it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from agent.config import AUTH_AUTO, AUTH_TOKEN, load_config
from agent.errors import ConfigError
from agent.sdk.settings import parse_bool, parse_duration, parse_size, validate_url

GOOD = {"CODER_AGENT_URL": "https://coder.example.com/", "CODER_AGENT_TOKEN": "t" * 36}


def test_minimal_token_config_and_defaults() -> None:
    config = load_config([], GOOD)
    assert config.url == "https://coder.example.com"  # trailing slash dropped
    assert config.auth == AUTH_TOKEN
    assert config.token == "t" * 36
    assert config.log_dir == Path(tempfile.gettempdir())
    assert config.log_max_bytes == 5 << 20
    assert config.shutdown_grace == 3.0
    assert config.reconnect_max_delay == 10.0
    assert not config.no_reap


def test_flags_win_over_environment() -> None:
    config = load_config(
        [
            "--agent-url",
            "http://127.0.0.1:3000",
            "--agent-token",
            "f" * 36,
            "--log-dir",
            "/var/log/x",
        ],
        GOOD,
    )
    assert config.url == "http://127.0.0.1:3000"
    assert config.token == "f" * 36
    assert config.log_dir == Path("/var/log/x")


def test_auth_defaults_to_auto_without_a_token() -> None:
    assert load_config([], {"CODER_AGENT_URL": "http://x"}).auth == AUTH_AUTO


def test_no_reap_flag() -> None:
    assert load_config(["--no-reap"], GOOD).no_reap


def test_tunables_are_parsed() -> None:
    config = load_config(
        [],
        {
            **GOOD,
            "CODER_AGENT_LOG_MAX_SIZE": "512KiB",
            "CODER_AGENT_SHUTDOWN_GRACE": "1m30s",
            "CODER_AGENT_RECONNECT_MAX_DELAY": "250ms",
            "CODER_AGENT_INSECURE_SKIP_TLS_VERIFY": "true",
        },
    )
    assert config.log_max_bytes == 512 * 1024
    assert config.shutdown_grace == 90.0
    assert config.reconnect_max_delay == 0.25
    assert config.insecure_skip_verify


@pytest.mark.parametrize(
    ("env", "argv", "setting"),
    [
        ({}, [], "CODER_AGENT_URL"),
        ({**GOOD, "CODER_AGENT_URL": "coder.example.com"}, [], "CODER_AGENT_URL"),
        ({**GOOD, "CODER_AGENT_URL": "http://host:port"}, [], "CODER_AGENT_URL"),
        ({**GOOD, "CODER_AGENT_AUTH": "magic"}, [], "CODER_AGENT_AUTH"),
        ({"CODER_AGENT_URL": "http://x", "CODER_AGENT_AUTH": "token"}, [], "CODER_AGENT_TOKEN"),
        ({**GOOD, "CODER_AGENT_SHUTDOWN_GRACE": "-1s"}, [], "CODER_AGENT_SHUTDOWN_GRACE"),
        ({**GOOD, "CODER_AGENT_SHUTDOWN_GRACE": "3 parsecs"}, [], "CODER_AGENT_SHUTDOWN_GRACE"),
        ({**GOOD, "CODER_AGENT_RECONNECT_MAX_DELAY": "0"}, [], "CODER_AGENT_RECONNECT_MAX_DELAY"),
        ({**GOOD, "CODER_AGENT_PTY_MAX_SESSIONS": "0"}, [], "CODER_AGENT_PTY_MAX_SESSIONS"),
        ({**GOOD, "CODER_AGENT_PTY_MAX_SESSIONS": "many"}, [], "CODER_AGENT_PTY_MAX_SESSIONS"),
        (
            {**GOOD, "CODER_AGENT_INSECURE_SKIP_TLS_VERIFY": "maybe"},
            [],
            "CODER_AGENT_INSECURE_SKIP_TLS_VERIFY",
        ),
        ({**GOOD, "CODER_AGENT_TLS_CA_FILE": "/nonexistent.pem"}, [], "CODER_AGENT_TLS_CA_FILE"),
        (
            {**GOOD, "AWS_EC2_METADATA_SERVICE_ENDPOINT": "nope"},
            [],
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        ),
        (GOOD, ["--unknown"], "--unknown"),
        (GOOD, ["--log-dir"], "--log-dir"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_setting(
    env: dict[str, str], argv: list[str], setting: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(argv, env)
    assert info.value.setting == setting
    assert str(info.value).startswith(setting)
    assert "\n" not in str(info.value)


def test_log_dir_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    file = tmp_path / "f"
    file.write_text("")
    with pytest.raises(ConfigError, match="CODER_AGENT_LOG_DIR"):
        load_config([], {**GOOD, "CODER_AGENT_LOG_DIR": str(file)})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2.5", 2.5), ("250ms", 0.25), ("1h2m3s", 3723.0), ("1500us", 0.0015), ("0", 0.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text, "X") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5 m", "m5", "1s2", "-3s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text, "X")


@pytest.mark.parametrize(("text", "size"), [("100", 100), ("5MiB", 5 << 20), ("1G", 1 << 30)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text, "X") == size


def test_parse_bool_and_url() -> None:
    assert parse_bool("Yes", "X") and not parse_bool("off", "X")
    assert validate_url("https://h:8443/base/", "X") == "https://h:8443/base"


def test_coder_agent_no_reap_env() -> None:
    assert load_config([], {**GOOD, "CODER_AGENT_NO_REAP": "true"}).no_reap
    assert not load_config([], {**GOOD, "CODER_AGENT_NO_REAP": "false"}).no_reap
    with pytest.raises(ConfigError, match="CODER_AGENT_NO_REAP"):
        load_config([], {**GOOD, "CODER_AGENT_NO_REAP": "maybe"})


def test_prometheus_address_is_the_metrics_address() -> None:
    """Coder's --prometheus-address and CODER_AGENT_PROMETHEUS_ADDRESS set our metrics
    endpoint; ours (CODER_AGENT_METRICS_ADDRESS) still works; two that disagree are an
    error naming both."""
    assert load_config(["--prometheus-address", "127.0.0.1:9100"], GOOD).metrics_address == (
        "127.0.0.1",
        9100,
    )
    coder_env = {**GOOD, "CODER_AGENT_PROMETHEUS_ADDRESS": "0.0.0.0:2112"}
    assert load_config([], coder_env).metrics_address == ("0.0.0.0", 2112)
    assert (
        load_config([], {**coder_env, "CODER_AGENT_PROMETHEUS_ADDRESS": ""}).metrics_address is None
    )
    ours = {**GOOD, "CODER_AGENT_METRICS_ADDRESS": "127.0.0.1:2200"}
    assert load_config([], ours).metrics_address == ("127.0.0.1", 2200)
    with pytest.raises(ConfigError, match="CODER_AGENT_METRICS_ADDRESS"):
        load_config([], {**coder_env, "CODER_AGENT_METRICS_ADDRESS": "127.0.0.1:2200"})
    with pytest.raises(ConfigError, match="--prometheus-address"):
        load_config(["--prometheus-address", "9100"], GOOD)


def test_coder_log_sink_flags_and_env(tmp_path: Path) -> None:
    config = load_config(
        ["--log-human", "/dev/stderr", "--log-json", str(tmp_path / "agent.json")],
        {**GOOD, "CODER_AGENT_LOGGING_STACKDRIVER": str(tmp_path / "sd.json")},
    )
    assert config.log_human == "/dev/stderr"
    assert config.log_json == str(tmp_path / "agent.json")
    assert config.log_stackdriver == str(tmp_path / "sd.json")
    assert load_config([], GOOD).log_human == ""  # off unless asked for
    with pytest.raises(ConfigError, match="CODER_AGENT_LOGGING_JSON"):
        load_config(["--log-json", str(tmp_path / "missing" / "x.json")], GOOD)


def test_pprof_address_is_accepted() -> None:
    assert load_config(["--pprof-address", "127.0.0.1:6060"], GOOD).pprof_address == (
        "127.0.0.1:6060"
    )
    assert load_config([], {**GOOD, "CODER_AGENT_PPROF_ADDRESS": ":6061"}).pprof_address == ":6061"
    assert load_config([], GOOD).pprof_address == ""


def test_no_flags_reads_as_argparse_would_without_importing_it() -> None:
    # An agent configured by its environment skips argparse; the namespace it gets
    # instead must be the one argparse gives for no flags (a flag added to the parser
    # and not to FLAG_DESTS fails here).
    from agent.config import build_parser, parse_flags

    assert vars(parse_flags([])) == vars(build_parser().parse_known_args([])[0])
