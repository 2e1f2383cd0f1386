"""Wire models and codecs for Coder's agent API.

Pure: no I/O, no third-party imports. This is the only part of ``agent`` that the
control plane may import.
"""
