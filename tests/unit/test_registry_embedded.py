"""The embedded registry: same interface as etcd; leases tested with a fake clock, no sleeping."""

from __future__ import annotations

from splitinfer.registry import EmbeddedRegistry, ServerRecord


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lease_expires_without_keepalive_and_renews_with_it() -> None:
    clock = FakeClock()
    registry = EmbeddedRegistry(clock)
    a = registry.register(ServerRecord("a:1", partitions=("m@fp32/p0",)), ttl_s=10)
    b = registry.register(ServerRecord("b:1", partitions=("m@fp32/p0", "m@fp32/p1")), ttl_s=10)
    assert sorted(r.address for r in registry.replicas("m@fp32/p0")) == ["a:1", "b:1"]
    clock.now += 6
    a.keepalive()
    clock.now += 6  # b missed its renewal: gone; a renewed at +6: alive until +16
    assert list(registry.servers()) == ["a:1"]
    assert registry.replicas("m@fp32/p1") == []
    b.update(ServerRecord("b:1"))  # an expired server must register again, not resurrect by update
    assert "b:1" not in registry.servers()
    clock.now += 5
    assert registry.servers() == {}


def test_version_and_subscribers_follow_every_change() -> None:
    registry = EmbeddedRegistry(FakeClock())
    seen: list[int] = []
    registry.subscribe(seen.append)
    v0 = registry.version
    reg = registry.register(ServerRecord("a:1"), ttl_s=5)
    reg.update(ServerRecord("a:1", in_flight=2))
    reg.close()
    assert registry.version == v0 + 3 and seen == [v0 + 1, v0 + 2, v0 + 3]
    assert registry.servers() == {}


def test_record_round_trips_through_json() -> None:
    record = ServerRecord("a:1", ("m@fp32/p0",), 3, {"m@fp32/p0": 2}, 1e9, 1 << 30, "cpu", 12.5)
    assert ServerRecord.from_json(record.to_json()) == record
