"""TLS and mutual TLS on every link, bearer tokens for devices, roles for administrative RPCs."""

from splitinfer.security.auth import ADMIN, CLUSTER, DEVICE, Identity, TokenTable
from splitinfer.security.tls import (
    ClientSecurity,
    ServerSecurity,
    client_security_from_dir,
    server_security_from_dir,
)

__all__ = [
    "ADMIN",
    "CLUSTER",
    "DEVICE",
    "ClientSecurity",
    "Identity",
    "ServerSecurity",
    "TokenTable",
    "client_security_from_dir",
    "server_security_from_dir",
]
