"""How many listening ports an agent reports: a cap that keeps the answer inside the one
coordinate value a server accepts (1 MiB), whatever the process names. Pure."""

from __future__ import annotations

import json

from agent.ports import MAX_REPORTED_PORTS, Port, reportable
from agent.sdk.extensions import ListeningPortsResponse
from agent.sdk.workspaceagents import ListeningPort

COORDINATE_VALUE_LIMIT = 1 << 20  # what the server's coordinate socket takes in one value


def test_the_lowest_ports_are_reported_and_never_the_agents_own() -> None:
    ports = [Port(p, "srv") for p in range(65_535, 9, -1)]  # every port, highest first
    kept = reportable(ports, own_port=12)
    assert len(kept) == MAX_REPORTED_PORTS
    assert [p.port for p in kept] == [p for p in range(10, 10 + MAX_REPORTED_PORTS + 1) if p != 12]


def test_few_ports_are_all_reported() -> None:
    ports = [Port(8080, "web"), Port(3000, "node"), Port(2113, "agent")]
    assert reportable(ports, own_port=2113) == [Port(3000, "node"), Port(8080, "web")]


def test_the_largest_answer_fits_one_coordinate_value() -> None:
    # The kernel's process names are at most 15 bytes; JSON escapes each as \uXXXX.
    name = "\u2603" * 15
    ports = reportable((Port(p, name) for p in range(10_000, 65_536)), own_port=0)
    reply = ListeningPortsResponse(
        "5e1c0d52-77d2-4b8e-9c5c-1f00c4a9d7e3",
        tuple(ListeningPort(p.process_name, p.network, p.port) for p in ports),
    )
    size = len(json.dumps(reply.to_json()).encode())
    assert size < 600_000 < COORDINATE_VALUE_LIMIT, size
