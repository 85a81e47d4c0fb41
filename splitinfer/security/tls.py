"""Transport security settings: which certificates a daemon serves with and presents, and its tokens.

A daemon's security comes from one directory laid out as ``make certs`` writes it (``--tls-dir``):
``ca.pem`` (trusted roots), ``server.pem``/``server.key`` (served), ``cluster.pem``/``cluster.key`` (presented
to other components), optionally ``tokens.json`` (bearer tokens it accepts). Production deployments mount
their own files with the same names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from splitinfer.errors import InvalidArgument
from splitinfer.security.auth import TokenTable

__all__ = ["ClientSecurity", "ServerSecurity", "client_security_from_dir", "server_security_from_dir"]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class ServerSecurity:
    """TLS for a server, whether clients must present a certificate, and the tokens it accepts."""

    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    #: Mutual TLS: refuse connections without a client certificate signed by the CA (cluster-internal
    #: services). False for the device-facing front-end, whose callers authenticate with tokens.
    require_client_cert: bool
    tokens: TokenTable | None = None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)],
            root_certificates=self.ca_pem,
            require_client_auth=self.require_client_cert,
        )


@dataclass(frozen=True)
class ClientSecurity:
    """What a caller trusts and presents: the CA, optionally a client certificate, optionally a token."""

    ca_pem: bytes
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    token: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        channel = grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.cert_pem)
        if self.token:
            return grpc.composite_channel_credentials(channel, grpc.access_token_call_credentials(self.token))
        return channel


def server_security_from_dir(directory: Path, *, require_client_cert: bool) -> ServerSecurity:
    tokens_file = directory / "tokens.json"
    return ServerSecurity(
        key_pem=_read(directory / "server.key"),
        cert_pem=_read(directory / "server.pem"),
        ca_pem=_read(directory / "ca.pem"),
        require_client_cert=require_client_cert,
        tokens=TokenTable.from_file(tokens_file) if tokens_file.exists() else None,
    )


def client_security_from_dir(directory: Path, identity: str = "cluster", token: str = "") -> ClientSecurity:
    """The CA of ``directory``, the ``identity`` certificate (``cluster``, ``admin``; empty: none) and,
    unless ``token`` is given, the identity's token file when there is one (``cluster.token``)."""
    if not identity:
        return ClientSecurity(ca_pem=_read(directory / "ca.pem"), token=token)
    token_file = directory / f"{identity}.token"
    if not token and token_file.exists():
        token = token_file.read_text().strip()
    return ClientSecurity(
        ca_pem=_read(directory / "ca.pem"),
        cert_pem=_read(directory / f"{identity}.pem"),
        key_pem=_read(directory / f"{identity}.key"),
        token=token,
    )
