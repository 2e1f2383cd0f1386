"""Per-agent delivery lanes of the bus: order within an agent, independence between agents,
bounds. Pure asyncio: deliveries block on events the test sets, no sockets, no sleeps."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.buslanes import Lanes


class Recorder:
    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}
        self.arrived = asyncio.Condition()

    def gate(self, message: str) -> asyncio.Event:
        self.started[message] = asyncio.Event()
        self.gates[message] = asyncio.Event()
        return self.gates[message]

    async def deliver(self, message: str) -> None:
        if message in self.started:
            self.started[message].set()
        gate = self.gates.get(message)
        if gate is not None:
            await gate.wait()
        if message.startswith("boom"):
            raise RuntimeError(message)
        async with self.arrived:
            self.delivered.append(message)
            self.arrived.notify_all()

    async def wait_for(self, *messages: str) -> None:
        async with self.arrived:
            await asyncio.wait_for(
                self.arrived.wait_for(lambda: all(m in self.delivered for m in messages)), 5
            )


async def test_one_agents_messages_arrive_in_order() -> None:
    r = Recorder()
    lanes: Lanes[str] = Lanes(r.deliver, max_per_lane=100, max_lane_bytes=10_000, max_bytes=10_000)
    for n in range(20):
        assert lanes.put("a", f"a{n}", 10)
    await r.wait_for("a19")
    assert r.delivered == [f"a{n}" for n in range(20)]
    await lanes.close()


async def test_a_stalled_agent_does_not_hold_up_another() -> None:
    r = Recorder()
    lanes: Lanes[str] = Lanes(r.deliver, max_per_lane=100, max_lane_bytes=10_000, max_bytes=10_000)
    gate = r.gate("x-stuck")
    lanes.put("x", "x-stuck", 10)
    lanes.put("x", "x-after", 10)
    await asyncio.wait_for(r.started["x-stuck"].wait(), 5)
    lanes.put("y", "y1", 10)
    await r.wait_for("y1")
    assert r.delivered == ["y1"]  # x's next message still waits behind the stuck one
    assert lanes.lanes == 1 and lanes.queued_bytes == 20
    gate.set()
    await r.wait_for("x-stuck", "x-after")
    assert r.delivered == ["y1", "x-stuck", "x-after"]
    await lanes.close()


async def test_a_failed_delivery_does_not_stop_its_lane() -> None:
    r = Recorder()
    lanes: Lanes[str] = Lanes(r.deliver, max_per_lane=100, max_lane_bytes=10_000, max_bytes=10_000)
    lanes.put("a", "boom", 10)
    lanes.put("a", "a-next", 10)
    await r.wait_for("a-next")
    assert r.delivered == ["a-next"]
    await lanes.close()


async def test_one_stalled_agent_cannot_take_every_lanes_room() -> None:
    r = Recorder()
    lanes: Lanes[str] = Lanes(r.deliver, max_per_lane=100, max_lane_bytes=300, max_bytes=1000)
    gate = r.gate("x0")
    assert lanes.put("x", "x0", 100)
    await asyncio.wait_for(r.started["x0"].wait(), 5)
    assert lanes.put("x", "x1", 100) and lanes.put("x", "x2", 100)
    assert not lanes.put("x", "x3", 100)  # x's lane is full ...
    assert lanes.put("y", "y0", 300)  # ... and the others still have room
    await r.wait_for("y0")
    gate.set()
    await r.wait_for("x2")
    assert lanes.put("x", "x4", 300)  # delivered messages free their lane's room
    await r.wait_for("x4")
    await lanes.close()


@pytest.mark.parametrize("limit", ["per_lane", "bytes"])
async def test_full_lanes_refuse_and_free_their_room_once_delivered(limit: str) -> None:
    r = Recorder()
    lanes: Lanes[str] = Lanes(r.deliver, max_per_lane=3, max_lane_bytes=900, max_bytes=1000)
    gate = r.gate("first")
    assert lanes.put("a", "first", 100)
    if limit == "per_lane":
        assert lanes.put("a", "second", 100) and lanes.put("a", "third", 100)
        assert not lanes.put("a", "fourth", 100)
        assert lanes.put("b", "b1", 100)  # another agent has room
    else:
        assert lanes.put("b", "big", 800)
        assert not lanes.put("c", "c1", 101)
        assert lanes.put("c", "c1", 100)
    gate.set()
    await r.wait_for("first", "b1" if limit == "per_lane" else "c1")
    async with r.arrived:
        await asyncio.wait_for(r.arrived.wait_for(lambda: lanes.queued_bytes == 0), 5)
    async with asyncio.timeout(5):
        while lanes.lanes:  # each lane's task ends once its queue is empty
            await asyncio.sleep(0)
    assert (lanes.lanes, lanes.queued_bytes) == (0, 0)
    await lanes.close()


async def test_close_stops_stuck_lanes_and_forgets_their_messages() -> None:
    r = Recorder()
    lanes: Lanes[str] = Lanes(r.deliver, max_per_lane=100, max_lane_bytes=10_000, max_bytes=10_000)
    r.gate("stuck")
    lanes.put("x", "stuck", 10)
    lanes.put("x", "never", 10)
    await asyncio.wait_for(r.started["stuck"].wait(), 5)
    await lanes.close()
    assert (lanes.lanes, lanes.queued_bytes, r.delivered) == (0, 0, [])
