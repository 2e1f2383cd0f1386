"""Agent settings from flags and the environment, with the names `coder agent` uses.

Pure: takes an argv list and an environment mapping, returns a frozen config or raises
:class:`ConfigError` naming the setting. The CLI turns that into one line and exit code 2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Final, NoReturn

if TYPE_CHECKING:
    import argparse

from agent.errors import ConfigError
from agent.sdk.settings import (
    MIB,
    parse_bool,
    parse_duration,
    parse_listen_address,
    parse_size,
    validate_url,
)

AUTH_TOKEN: Final = "token"
AUTH_AWS: Final = "aws-instance-identity"
AUTH_GOOGLE: Final = "google-instance-identity"
AUTH_AZURE: Final = "azure-instance-identity"
AUTH_AUTO: Final = "auto"
AUTH_METHODS: Final = (AUTH_TOKEN, AUTH_AWS, AUTH_GOOGLE, AUTH_AZURE, AUTH_AUTO)

DEFAULT_METRICS_ADDRESS: Final = "127.0.0.1:2113"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    url: str
    auth: str
    token: str
    log_dir: Path
    no_reap: bool = False
    insecure_skip_verify: bool = False
    ca_file: str = ""
    log_max_bytes: int = 5 * MIB
    log_backups: int = 1
    startup_log_max_bytes: int = 5 * MIB
    shutdown_grace: float = 3.0
    # Ceiling of the run loop's reconnect backoff (Coder's run loop uses 10 s).
    reconnect_max_delay: float = 10.0
    pty_idle_timeout: float = 300.0
    pty_max_sessions: int = 64
    pty_scrollback_bytes: int = 256 * 1024
    dmi_dir: Path = Path("/sys/class/dmi/id")
    hypervisor_uuid_path: Path = Path("/sys/hypervisor/uuid")
    cloud_id_path: Path = Path("/run/cloud-init/cloud-id")
    # AWS_EC2_METADATA_DISABLED=true, as the AWS SDKs read it: auto never picks AWS.
    aws_metadata_disabled: bool = False
    aws_metadata_endpoint: str = "http://169.254.169.254"
    gce_metadata_host: str = "169.254.169.254"
    azure_imds_endpoint: str = "http://169.254.169.254"
    google_audience: str = "coder"
    metadata_timeout: float = 2.0
    # (host, port) of the Prometheus endpoint; None is off. load_config defaults it on.
    metrics_address: tuple[str, int] | None = None
    # Where the agent keeps what must outlive it (the SSH host key). None: default_state_dir.
    state_dir: Path | None = None
    # Coder's extra log sinks: "" (off), "/dev/stdout", "/dev/stderr" or a file path.
    log_human: str = ""
    log_json: str = ""
    log_stackdriver: str = ""
    # Accepted for `coder agent` compatibility; there is no profiler to serve.
    pprof_address: str = ""

    @property
    def uses_token_auth(self) -> bool:
        return self.auth == AUTH_TOKEN


# Coder's extra log sinks: flag, environment variable, format.
LOG_SINK_FLAGS: Final = (
    ("log-human", "CODER_AGENT_LOGGING_HUMAN", "human-readable"),
    ("log-json", "CODER_AGENT_LOGGING_JSON", "JSON"),
    ("log-stackdriver", "CODER_AGENT_LOGGING_STACKDRIVER", "Stackdriver (Google Cloud Logging)"),
)


# The flags' destinations, all None when no flag is given (``store_true`` flags default to
# None too, so that the environment decides). argparse (with gettext, 0.35 MiB resident
# for the agent's lifetime) is imported only when there are flags to parse; the usual
# agent, configured by its environment, has none.
FLAG_DESTS: Final = (
    "agent_url",
    "auth",
    "agent_token",
    "log_dir",
    "no_reap",
    "metrics_address",
    "pprof_address",
    *(flag.replace("-", "_") for flag, _, _ in LOG_SINK_FLAGS),
    "insecure_skip_tls_verify",
)


def build_parser() -> argparse.ArgumentParser:
    import argparse

    class _Parser(argparse.ArgumentParser):
        """argparse that raises :class:`ConfigError` (one line, exit 2) instead of
        printing usage and exiting from inside the library."""

        def error(self, message: str) -> NoReturn:
            setting = "flags"
            if message.startswith("argument ") and ": " in message:
                setting, message = message[len("argument ") :].split(": ", 1)
            raise ConfigError(setting, message)

    parser = _Parser(
        prog="wsagent agent",
        description="Run the workspace agent in the foreground.",
    )
    parser.add_argument("--agent-url", help="control plane URL (env CODER_AGENT_URL)")
    parser.add_argument("--auth", help=f"one of {', '.join(AUTH_METHODS)} (env CODER_AGENT_AUTH)")
    parser.add_argument("--agent-token", help="agent token (env CODER_AGENT_TOKEN)")
    parser.add_argument("--log-dir", help="log directory (env CODER_AGENT_LOG_DIR)")
    parser.add_argument(
        "--no-reap",
        action="store_true",
        default=None,
        help="as PID 1, do not fork a process reaper (env CODER_AGENT_NO_REAP)",
    )
    parser.add_argument(
        "--prometheus-address",
        "--metrics-address",
        dest="metrics_address",
        metavar="HOST:PORT",
        help="HOST:PORT of the Prometheus endpoint, empty or off disables "
        f"(env CODER_AGENT_PROMETHEUS_ADDRESS or CODER_AGENT_METRICS_ADDRESS; "
        f"default {DEFAULT_METRICS_ADDRESS})",
    )
    parser.add_argument(
        "--pprof-address",
        metavar="HOST:PORT",
        help="accepted for compatibility with `coder agent`; the Python agent has no "
        "profiler to serve (env CODER_AGENT_PPROF_ADDRESS)",
    )
    for flag, env_name, what in LOG_SINK_FLAGS:
        parser.add_argument(
            f"--{flag}",
            metavar="PATH",
            help=f"also write {what} logs to this file, /dev/stdout or /dev/stderr "
            f"(env {env_name})",
        )
    parser.add_argument(
        "--insecure-skip-tls-verify",
        action="store_true",
        default=None,
        help="do not verify the control plane's TLS certificate "
        "(env CODER_AGENT_INSECURE_SKIP_TLS_VERIFY)",
    )
    return parser


def parse_flags(argv: Sequence[str]) -> argparse.Namespace | SimpleNamespace:
    if not argv:
        return SimpleNamespace(**dict.fromkeys(FLAG_DESTS))
    args, unknown = build_parser().parse_known_args(list(argv))
    if unknown:
        raise ConfigError(unknown[0], "unknown flag")
    return args


def _env_or(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name)
    return default if value is None or value == "" else value


def load_config(argv: Sequence[str], env: Mapping[str, str]) -> AgentConfig:
    """Build the config; flags win over environment variables."""
    args = parse_flags(argv)

    url = validate_url(args.agent_url or env.get("CODER_AGENT_URL", ""), "CODER_AGENT_URL")
    token = args.agent_token if args.agent_token is not None else env.get("CODER_AGENT_TOKEN", "")
    auth = (args.auth or env.get("CODER_AGENT_AUTH", "")).strip()
    if not auth:
        auth = AUTH_TOKEN if token else AUTH_AUTO
    if auth not in AUTH_METHODS:
        raise ConfigError(
            "CODER_AGENT_AUTH", f"must be one of {', '.join(AUTH_METHODS)}, got {auth!r}"
        )
    if auth == AUTH_TOKEN and not token:
        raise ConfigError("CODER_AGENT_TOKEN", "is required when CODER_AGENT_AUTH=token")

    log_dir = Path(args.log_dir or env.get("CODER_AGENT_LOG_DIR") or _temp_dir())
    if log_dir.exists() and not log_dir.is_dir():
        raise ConfigError("CODER_AGENT_LOG_DIR", f"{log_dir} is not a directory")

    insecure = args.insecure_skip_tls_verify
    if insecure is None:
        insecure = parse_bool(
            env.get("CODER_AGENT_INSECURE_SKIP_TLS_VERIFY", ""),
            "CODER_AGENT_INSECURE_SKIP_TLS_VERIFY",
        )
    ca_file = env.get("CODER_AGENT_TLS_CA_FILE", "")
    if ca_file and not Path(ca_file).is_file():
        raise ConfigError("CODER_AGENT_TLS_CA_FILE", f"{ca_file} is not a readable file")

    def size(name: str, default: int) -> int:
        raw = env.get(name)
        return default if not raw else parse_size(raw, name)

    def duration(name: str, default: float) -> float:
        raw = env.get(name)
        return default if not raw else parse_duration(raw, name)

    def positive_duration(name: str, default: float) -> float:
        value = duration(name, default)
        if value <= 0:
            raise ConfigError(name, "must be positive")
        return value

    def positive_int(name: str, default: int) -> int:
        raw = env.get(name)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(name, f"invalid integer {raw!r}") from None
        if value <= 0:
            raise ConfigError(name, "must be positive")
        return value

    aws = _env_or(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://169.254.169.254")
    azure = _env_or(env, "CODER_AGENT_AZURE_IMDS_ENDPOINT", "http://169.254.169.254")
    for name, value in (
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", aws),
        ("CODER_AGENT_AZURE_IMDS_ENDPOINT", azure),
    ):
        validate_url(value, name)

    no_reap = args.no_reap
    if no_reap is None:
        no_reap = parse_bool(env.get("CODER_AGENT_NO_REAP", ""), "CODER_AGENT_NO_REAP")

    def flag_or_env(value: str | None, name: str) -> str:
        return value if value is not None else env.get(name, "")

    sinks = {
        flag: flag_or_env(getattr(args, flag.replace("-", "_")), env_name).strip()
        for flag, env_name, _ in LOG_SINK_FLAGS
    }
    for (flag, env_name, _), location in zip(LOG_SINK_FLAGS, sinks.values(), strict=True):
        if location and location not in ("/dev/stdout", "/dev/stderr"):
            parent = Path(location).parent
            if not parent.is_dir():
                raise ConfigError(f"{env_name} (--{flag})", f"{parent} is not a directory")

    return AgentConfig(
        url=url,
        auth=auth,
        token=token,
        log_dir=log_dir,
        no_reap=no_reap,
        insecure_skip_verify=insecure,
        ca_file=ca_file,
        log_max_bytes=size("CODER_AGENT_LOG_MAX_SIZE", 5 * MIB),
        log_backups=positive_int("CODER_AGENT_LOG_BACKUPS", 1),
        startup_log_max_bytes=size("CODER_AGENT_STARTUP_LOG_MAX_SIZE", 5 * MIB),
        shutdown_grace=duration("CODER_AGENT_SHUTDOWN_GRACE", 3.0),
        reconnect_max_delay=positive_duration("CODER_AGENT_RECONNECT_MAX_DELAY", 10.0),
        pty_idle_timeout=duration("CODER_AGENT_PTY_IDLE_TIMEOUT", 300.0),
        pty_max_sessions=positive_int("CODER_AGENT_PTY_MAX_SESSIONS", 64),
        pty_scrollback_bytes=size("CODER_AGENT_PTY_SCROLLBACK_SIZE", 256 * 1024),
        dmi_dir=Path(_env_or(env, "CODER_AGENT_DMI_DIR", "/sys/class/dmi/id")),
        hypervisor_uuid_path=Path(
            _env_or(env, "CODER_AGENT_HYPERVISOR_UUID_PATH", "/sys/hypervisor/uuid")
        ),
        cloud_id_path=Path(_env_or(env, "CODER_AGENT_CLOUD_ID_PATH", "/run/cloud-init/cloud-id")),
        aws_metadata_disabled=env.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() == "true",
        aws_metadata_endpoint=aws.rstrip("/"),
        gce_metadata_host=_env_or(env, "GCE_METADATA_HOST", "169.254.169.254"),
        azure_imds_endpoint=azure.rstrip("/"),
        google_audience=_env_or(env, "CODER_AGENT_GOOGLE_AUDIENCE", "coder"),
        metadata_timeout=duration("CODER_AGENT_METADATA_TIMEOUT", 2.0),
        metrics_address=_metrics_address(args.metrics_address, env),
        state_dir=_state_dir(env),
        log_human=sinks["log-human"],
        log_json=sinks["log-json"],
        log_stackdriver=sinks["log-stackdriver"],
        pprof_address=flag_or_env(args.pprof_address, "CODER_AGENT_PPROF_ADDRESS").strip(),
    )


def _temp_dir() -> str:
    import tempfile  # with shutil, bz2, lzma and random: only when it is needed

    return tempfile.gettempdir()


def default_state_dir(env: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/wsagent``, else ``~/.local/state/wsagent``: in the home directory,
    which outlives workspace rebuilds more often than anything else does."""
    base = env.get("XDG_STATE_HOME", "")
    if base:
        return Path(base) / "wsagent"
    home = env.get("HOME", "") or os.path.expanduser("~")
    return Path(home) / ".local" / "state" / "wsagent"


def _state_dir(env: Mapping[str, str]) -> Path:
    raw = env.get("CODER_AGENT_STATE_DIR", "")
    path = Path(raw) if raw else default_state_dir(env)
    if path.exists() and not path.is_dir():
        raise ConfigError("CODER_AGENT_STATE_DIR", f"{path} is not a directory")
    return path


def _metrics_address(flag: str | None, env: Mapping[str, str]) -> tuple[str, int] | None:
    """The flag, else Coder's CODER_AGENT_PROMETHEUS_ADDRESS, else our
    CODER_AGENT_METRICS_ADDRESS; two variables that disagree are an error, not a guess."""
    if flag is not None:
        return parse_listen_address(flag, "--prometheus-address")
    prometheus = env.get("CODER_AGENT_PROMETHEUS_ADDRESS")
    metrics = env.get("CODER_AGENT_METRICS_ADDRESS")
    if prometheus is not None and metrics is not None and prometheus.strip() != metrics.strip():
        raise ConfigError(
            "CODER_AGENT_PROMETHEUS_ADDRESS",
            f"is {prometheus!r} but CODER_AGENT_METRICS_ADDRESS is {metrics!r}; they name the"
            " same endpoint, set one",
        )
    if prometheus is not None:
        return parse_listen_address(prometheus, "CODER_AGENT_PROMETHEUS_ADDRESS")
    return parse_listen_address(
        DEFAULT_METRICS_ADDRESS if metrics is None else metrics, "CODER_AGENT_METRICS_ADDRESS"
    )
