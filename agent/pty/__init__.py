"""Reconnecting terminal sessions served over dial-back WebSockets (docs/protocol.md, "Terminals").

Layout: ``ringbuffer`` (scrollback) and ``protocol`` (init + input decoding) are pure;
``process`` owns a PTY child; ``session`` pumps one session's output to its attachments
with backpressure; ``manager`` keys sessions by ID under a cap; ``dialback`` serves one
PTYRequest from the coordinate socket; ``command`` decides what a session runs.
"""

from agent.pty.command import CommandBuilder, LaunchSpec
from agent.pty.dialback import DialBackHandler
from agent.pty.manager import SessionLimitError, SessionManager
from agent.pty.session import FlowLimits

__all__ = [
    "CommandBuilder",
    "DialBackHandler",
    "FlowLimits",
    "LaunchSpec",
    "SessionLimitError",
    "SessionManager",
]
