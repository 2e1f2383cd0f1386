"""How the server process uses CPython's cyclic garbage collector, and what it costs.

Every connected agent keeps about 130 tracked objects alive (its WebSocket, its reader
task, the coordinator's entries): about 650,000 objects at 5,000 agents. With
CPython's default thresholds (700, 10, 10) a young collection runs every 700 net
allocations, so the objects of every request still waiting on the store are promoted,
and the oldest generation filled fast enough to be walked 3 to 6 times every 10 s, each
walk 0.3 to 0.8 s with the event loop stopped. Measured at 5,000 agents
(docs/benchmarks.md, "The garbage collector at 5,000 agents"): 30 to 40 % of the server's
wall time in collections, p95 latency 1.2 to 2.2 s. A young threshold of 50,000 lets
request objects die by reference count before a collection sees them; the objects made
at start-up (modules, routes, the application) are frozen out of every later walk.
Cyclic garbage is still collected, after more allocations.
"""

from __future__ import annotations

import gc
import time
from typing import Final

from agent.sdk.promtext import COUNTER, GAUGE, Family

# Allocations (net of deallocations) between young collections; the middle and oldest
# generations keep CPython's ratios, except that fewer young collections promote into
# the middle one before it is walked (its walk stays short: at most 5 x 50,000 objects).
THRESHOLDS: Final = (50_000, 5, 10)


class CollectorPauses:
    """Counts the collections and the time the process spent stopped in them."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.collections[generation] += 1
        self.seconds[generation] += time.perf_counter() - self._started

    def families(self) -> list[Family]:
        return [
            Family(
                "wsagent_server_gc_collections_total",
                COUNTER,
                "Cyclic garbage collections, by generation.",
                [("", (("generation", str(g)),), n) for g, n in enumerate(self.collections)],
            ),
            Family(
                "wsagent_server_gc_pause_seconds_total",
                COUNTER,
                "Time the server was stopped in garbage collections, by generation.",
                [("", (("generation", str(g)),), s) for g, s in enumerate(self.seconds)],
            ),
            Family(
                "wsagent_server_gc_threshold",
                GAUGE,
                "The collector's threshold for each generation (gc.get_threshold()).",
                [("", (("generation", str(g)),), t) for g, t in enumerate(gc.get_threshold())],
            ),
        ]


PAUSES: Final = CollectorPauses()


def tune_for_serving() -> None:
    """Call once the application is built and before it serves: freeze what exists now
    (it lives as long as the process) and raise the thresholds. Idempotent."""
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    if PAUSES.observe not in gc.callbacks:
        gc.callbacks.append(PAUSES.observe)
