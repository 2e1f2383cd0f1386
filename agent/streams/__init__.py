"""Byte streams on the dial-back plane: a connection to the agent's SSH server or to a TCP
port on the workspace's loopback, carried by its own WebSocket (docs/protocol.md).

``handler`` serves StreamRequests (connect, dial back, pump); ``tcp`` connects loopback
ports. The SSH server is a separate component (agent/ssh) plugged in as a connector.
"""

from agent.streams.handler import Connection, Connector, StreamHandler, pump
from agent.streams.tcp import connect_loopback

__all__ = ["Connection", "Connector", "StreamHandler", "connect_loopback", "pump"]
