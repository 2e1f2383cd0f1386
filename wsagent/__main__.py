"""Entry point of the ``wsagent`` console script."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

USAGE = """usage: wsagent <command> [flags]

commands:
  agent        run the workspace agent (env CODER_AGENT_URL, CODER_AGENT_TOKEN, ...)
  server       run the reference control plane
  admin        administer the control plane (users, workspaces, git auth)
  demo         control plane and agent together on loopback
  terminal     open a terminal to a workspace agent through the control plane
  logs         print a workspace agent's startup logs (--follow to keep printing)
  stat         CPU, memory and disk usage (cpu|mem|disk, --host, -o json): for metadata
  login        save the control plane URL and your session token (mode 0600)
  ssh          SSH into a workspace (--stdio: the ProxyCommand form)
  config-ssh   add your workspaces to ~/.ssh/config
  port-forward forward local TCP ports to a workspace
  gitssh       GIT_SSH_COMMAND helper (run by git)

flags:
  --version    print the version
"""

SERVER_COMMANDS = frozenset({"server", "admin", "demo", "terminal"})
USER_COMMANDS = frozenset({"login", "ssh", "config-ssh", "port-forward"})


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # git runs us as GIT_ASKPASS with one prompt argument; checked before anything else
    # (and without importing more than needed: it runs once per git prompt).
    if (
        len(args) == 1
        and args[0].startswith(("Username ", "Password "))
        and "GIT_PREFIX" in os.environ
    ):
        from agent.gitaskpass import main as askpass_main

        return askpass_main(args[0])
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in ("--version", "version"):
        from wscommon import __version__

        print(f"wsagent v{__version__}")
        return 0
    if command == "agent":
        from agent.cli import run_agent

        return run_agent(rest)
    if command == "gitssh":
        from agent.gitssh import main as gitssh_main

        return gitssh_main(rest)
    if command == "stat":
        from agent.statcmd import main as stat_main

        return stat_main(rest)
    if command == "logs":
        # A user's tool, but it needs only the agent's own dependencies (httpx, websockets).
        from wsagent.remote.logs import main as logs_main

        return logs_main(rest)
    if command in USER_COMMANDS:
        from wsagent.remote.cli import main as user_main

        return user_main(command, rest)
    if command in SERVER_COMMANDS:
        try:
            from controlplane.cli import main as server_main
        except ImportError as exc:
            print(
                f"wsagent {command}: the control plane is not installed ({exc.name}); "
                "install it with: pip install 'wsagent[server]'",
                file=sys.stderr,
            )
            return 2
        return server_main(command, rest)
    print(f"wsagent: unknown command {command!r}\n\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
