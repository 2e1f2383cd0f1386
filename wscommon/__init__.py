"""What the agent and the control plane share beyond the wire: the version, the logging
set-up and safe log files. Of ``agent`` it imports only the pure ``agent.sdk`` (for the error
hierarchy), and nothing of ``controlplane``, so both may import it."""

__version__ = "0.1.0"
