"""Instance-identity verification for the control plane (AWS, Google, Azure).

Each verifier is pure: it takes the proof, the trust material and ``now``, and returns
the verified identity or raises :class:`InvalidIdentity` with a precise reason. Fetching
Google's keys is the only I/O and lives in :mod:`controlplane.identity.google_keys`.
"""
