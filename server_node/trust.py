"""Who may aim a node at which addresses: the trust boundary of the data plane.

A route names the nodes a request travels to and the sink its outputs go to, so whoever writes a route
decides where a node connects. Nodes accept routes only from the cluster:

* with mutual TLS, every ModelServerService call must come from a cluster (or admin) identity; the auth
  interceptor refuses the rest before the route is read, and devices hold no such identity;
* without TLS, only addresses of server nodes in the registry are ever contacted: an address a step lists
  (as a replica or a fallback) that is not one is dropped from the route before anything is sent (a replica
  whose lease just expired is then simply not tried), and a step left with no registered address, or a
  sink that is neither a registered front-end nor the caller itself (same host), makes the request fail
  with PERMISSION_DENIED before the node reads a tensor or connects anywhere.

A node started without a registry and without TLS (a development node) has nothing to check against and
trusts its callers; it says so in its log.
"""

from __future__ import annotations

import logging

from splitinfer.errors import PermissionDenied
from splitinfer.registry import Registry
from splitinfer.transport.aio_server import peer_host
from splitinfer.v1 import route_pb2

__all__ = ["RouteTrust", "address_host"]

log = logging.getLogger("splitinfer.server")


def address_host(address: str) -> str:
    """The host of 'host:port' (IPv6 as '[::1]:5' -> '::1')."""
    host, _, _ = address.rpartition(":")
    return host.strip("[]")


def _peer_ip(peer: str) -> str:
    host = peer_host(peer)
    for prefix in ("ipv4:", "ipv6:"):
        if host.startswith(prefix):
            return host[len(prefix) :].strip("[]")
    return host


class RouteTrust:
    def __init__(self, registry: Registry | None, own_address: str, *, tls: bool) -> None:
        self._registry = registry
        self._own = own_address
        self._tls = tls
        if registry is None and not tls:
            log.warning("node %s has no registry and no TLS: it follows any route it is sent", own_address)

    @property
    def enforced(self) -> bool:
        """Whether :meth:`check` checks anything (a registry and no TLS); callers may skip it, and finding the
        caller's peer address, otherwise."""
        return not self._tls and self._registry is not None

    def check(self, route: route_pb2.Route, peer: str) -> None:
        """Drops from ``route`` (in place) every step address that is not a registered node; PermissionDenied
        when a step is left with none, or when the sink may not be contacted for a call from ``peer``."""
        registry = self._registry
        if not self.enforced or registry is None:  # registry: for the type checker (enforced implies one)
            return
        nodes = registry.servers()

        def known(address: str) -> bool:
            return address == self._own or address in nodes

        for index, step in enumerate(route.steps):
            unknown = [a for a in (*step.addresses, *step.fallback_addresses) if not known(a)]
            if not unknown:
                continue
            addresses = [a for a in step.addresses if known(a)]
            fallbacks = [a for a in step.fallback_addresses if known(a)]
            if not addresses and not fallbacks:
                raise PermissionDenied(
                    f"route step {index} names {unknown[0][:100]!r}, which is not a registered server node, "
                    "and no registered one"
                )
            log.warning("route step %d: not contacting unregistered %s", index, [a[:100] for a in unknown[:4]])
            del step.addresses[:]
            step.addresses.extend(addresses)
            del step.fallback_addresses[:]
            step.fallback_addresses.extend(fallbacks)
        sink = route.sink
        if sink and sink not in registry.frontends() and address_host(sink) != _peer_ip(peer):
            raise PermissionDenied(f"route sink {sink[:100]!r} is neither a registered front-end nor the caller")
