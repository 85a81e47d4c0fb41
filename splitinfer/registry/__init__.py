"""The server registry: etcd with leases and watches, or an embedded in-process backend."""

from splitinfer.registry.base import Registration, Registry, RegistryCache
from splitinfer.registry.embedded import EmbeddedRegistry
from splitinfer.registry.etcd import EtcdRegistry
from splitinfer.registry.record import FRONTEND, NODE, ServerRecord

__all__ = [
    "FRONTEND",
    "NODE",
    "EmbeddedRegistry",
    "EtcdRegistry",
    "Registration",
    "Registry",
    "RegistryCache",
    "ServerRecord",
    "connect",
]


def connect(endpoint: str) -> Registry:
    """A registry from its endpoint: ``etcd://host:port`` (or ``host:port``)."""
    return EtcdRegistry(endpoint)
