"""The etcd registry: leases for liveness, a watch-driven cache for clients (``etcd-sdk-python``).

Servers put their record under ``/splitinfer/servers/<address>`` attached to a lease of ``ttl_s`` and renew
it every ``ttl_s / 3``; if etcd is unreachable they keep trying, and once it answers again they re-create
the lease and the record if it expired meanwhile. Clients list the prefix once, then apply watch events to
their cache; if the watch fails (etcd restarted or unreachable) they keep serving from the cache and
re-list and re-watch in the background until it works again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pyetcd
from pyetcd import events as etcd_events

from splitinfer.registry.base import RegistryCache
from splitinfer.registry.record import ServerRecord

__all__ = ["EtcdRegistry", "parse_endpoint"]

log = logging.getLogger("splitinfer.registry")
PREFIX = "/splitinfer/servers/"


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``etcd://host:port`` or ``host:port`` -> (host, port)."""
    hostport = endpoint.strip().removeprefix("etcd://").rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"etcd endpoint {endpoint!r} must be host:port")
    return host, int(port)


class _EtcdRegistration:
    def __init__(self, registry: EtcdRegistry, record: ServerRecord, ttl_s: float) -> None:
        self._registry = registry
        self._record = record
        self._ttl_s = ttl_s
        self._lease: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        try:
            self._establish()
        except Exception as exc:  # etcd is down: serve anyway, the keepalive loop registers once it is back
            log.warning("cannot register %s yet (%s); retrying in the background", record.address, exc)
        self._thread = threading.Thread(target=self._keepalive, name=f"lease-{record.address}", daemon=True)
        self._thread.start()

    @property
    def _key(self) -> str:
        return PREFIX + self._record.address

    def _establish(self) -> None:
        client = self._registry.client
        self._lease = client.lease(max(1, round(self._ttl_s)))
        client.put(self._key, self._record.to_json(), lease=self._lease)

    def _keepalive(self) -> None:
        interval = max(0.2, self._ttl_s / 3)
        while not self._stop.wait(interval):
            try:
                with self._lock:
                    responses = self._lease.refresh() if self._lease is not None else []
                    if not responses or responses[0].TTL <= 0:
                        log.warning("lease for %s expired; registering again", self._record.address)
                        self._establish()
            except Exception as exc:
                log.warning("cannot renew the lease for %s: %s", self._record.address, exc)
                self._lease = None

    def update(self, record: ServerRecord) -> None:
        with self._lock:
            self._record = record
            try:
                if self._lease is None:
                    self._establish()
                else:
                    self._registry.client.put(self._key, record.to_json(), lease=self._lease)
            except Exception as exc:
                log.warning("cannot update the record of %s: %s", record.address, exc)
                self._lease = None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            if self._lease is not None:
                self._lease.revoke()  # the record goes at once rather than after the TTL
        except Exception as exc:
            log.info("could not revoke the lease of %s: %s", self._record.address, exc)


class EtcdRegistry:
    def __init__(
        self, endpoint: str, *, timeout_s: float = 5.0, resync_interval_s: float = 1.0, audit_interval_s: float = 3.0
    ) -> None:
        endpoints = [parse_endpoint(e) for e in endpoint.split(",") if e.strip()]
        # pyetcd refuses to use an endpoint for 300 s after one failure by default; retry after 1 s instead so
        # that the registry recovers as soon as etcd is back.
        self.client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=[pyetcd.Endpoint(host, port, secure=False, time_retry=1.0) for host, port in endpoints],
            timeout=timeout_s,
            failover=True,
        )
        self._cache = RegistryCache()
        self._watch_id: Any = None
        self._resync_interval_s = resync_interval_s
        #: How often the prefix is listed and compared with the cache: a watch on an etcd that restarted can
        #: stay open and silent, so missed events are found this way and repaired by a full resync.
        self._audit_interval_s = audit_interval_s
        self._audited_at = time.monotonic()
        self._needs_resync = threading.Event()
        self._stop = threading.Event()
        self._needs_resync.set()
        self._resync()
        self._thread = threading.Thread(target=self._resync_loop, name="etcd-resync", daemon=True)
        self._thread.start()

    def _resync(self) -> bool:
        """Lists the prefix and (re)starts the watch; False when etcd is unreachable."""
        try:
            if self._watch_id is not None:
                with contextlib.suppress(Exception):
                    self.client.cancel_watch(self._watch_id)
                self._watch_id = None
            records = [ServerRecord.from_json(value) for value, _ in self.client.get_prefix(PREFIX)]
            self._cache.replace_all(records)
            self._watch_id = self.client.add_watch_prefix_callback(PREFIX, self._on_watch)
        except Exception as exc:
            log.warning("registry resync failed (serving from cache): %s", exc)
            return False
        self._needs_resync.clear()
        return True

    def _resync_loop(self) -> None:
        while not self._stop.wait(self._resync_interval_s):
            if not self._needs_resync.is_set() and time.monotonic() - self._audited_at >= self._audit_interval_s:
                self._audit()
            if self._needs_resync.is_set():
                self._resync()

    def _audit(self) -> None:
        """Lists the prefix; records the cache lacks or holds differently mean the watch missed events."""
        self._audited_at = time.monotonic()
        try:
            listed = {r.address: r for r in (ServerRecord.from_json(v) for v, _ in self.client.get_prefix(PREFIX))}
        except Exception as exc:
            log.warning("registry audit failed (serving from cache): %s", exc)
            self._needs_resync.set()
            return
        cached = {**self._cache.servers(), **self._cache.frontends()}
        if listed != cached:
            time.sleep(0.05)  # a change in flight reaches the cache through the watch in a moment: look again
            cached = {**self._cache.servers(), **self._cache.frontends()}
            if any(cached.get(address) != record for address, record in listed.items()) or set(cached) - set(listed):
                log.info("registry cache differs from etcd (missed watch events); resynchronising")
                self._needs_resync.set()

    def _on_watch(self, response: Any) -> None:
        if isinstance(response, Exception):
            log.warning("registry watch failed: %s", response)
            self._needs_resync.set()
            return
        for event in response.events:
            address = event.key.decode().removeprefix(PREFIX)
            if isinstance(event, etcd_events.PutEvent):
                try:
                    self._cache.put(ServerRecord.from_json(event.value))
                except ValueError as exc:
                    log.warning("ignoring malformed record for %s: %s", address, exc)
            elif isinstance(event, etcd_events.DeleteEvent):
                self._cache.delete(address)

    def register(self, record: ServerRecord, ttl_s: float) -> _EtcdRegistration:
        return _EtcdRegistration(self, record, ttl_s)

    def servers(self) -> dict[str, ServerRecord]:
        return self._cache.servers()

    def frontends(self) -> dict[str, ServerRecord]:
        return self._cache.frontends()

    def replicas(self, partition: str) -> list[ServerRecord]:
        return self._cache.replicas(partition)

    @property
    def version(self) -> int:
        return self._cache.version

    @property
    def healthy(self) -> bool:
        """False while the cache may be stale (the watch is down)."""
        return not self._needs_resync.is_set()

    def subscribe(self, callback: Callable[[int], None]) -> None:
        self._cache.subscribe(callback)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._watch_id is not None:
            with contextlib.suppress(Exception):
                self.client.cancel_watch(self._watch_id)
        self.client.close()
