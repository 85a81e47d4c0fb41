"""Who may call what: identities from bearer tokens or client certificates, and the role each RPC needs.

Pure (no gRPC): the interceptor in :mod:`splitinfer.security.interceptor` feeds it what the transport says.

Roles:
- ``device``: devices and applications (tokens): plan, infer, read results, pull partitions.
- ``cluster``: splitinfer's own components (the ``splitinfer-cluster`` client certificate over mutual TLS):
  run partitions on each other, deliver and store results.
- ``admin``: operators (an admin token, or the ``splitinfer-admin`` client certificate): everything,
  including loading and unloading partitions and putting artifacts into the pool.

Tokens are kept as sha256 digests only (``tokens.json``), so a leaked file gives no usable token.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from splitinfer.errors import InvalidArgument, PermissionDenied, Unauthenticated

__all__ = [
    "ADMIN",
    "CLUSTER",
    "DEVICE",
    "POLICY",
    "Identity",
    "PermissionDenied",
    "TokenTable",
    "Unauthenticated",
    "new_token",
    "required_roles",
]

DEVICE, CLUSTER, ADMIN = "device", "cluster", "admin"

_ANY = frozenset({DEVICE, CLUSTER, ADMIN})
#: The roles that may call each RPC (by full method name, or a service prefix ending in "/").
POLICY: Mapping[str, frozenset[str]] = {
    "/grpc.health.v1.Health/": frozenset(),  # open: probes and load balancers
    "/grpc.reflection.v1alpha.ServerReflection/": frozenset(),
    "/grpc.reflection.v1.ServerReflection/": frozenset(),
    # The traffic mix and the divisions in force are the cluster's business, not a device's.
    "/splitinfer.v1.FrontEndService/GetFrontEndStatus": frozenset({CLUSTER, ADMIN}),
    "/splitinfer.v1.FrontEndService/": frozenset({DEVICE, ADMIN}),
    # Deploying and removing models changes what the cluster runs: operators only.
    "/inference.GRPCInferenceService/RepositoryModelLoad": frozenset({ADMIN}),
    "/inference.GRPCInferenceService/RepositoryModelUnload": frozenset({ADMIN}),
    "/inference.GRPCInferenceService/": frozenset({DEVICE, ADMIN}),
    "/splitinfer.v1.ModelPoolService/ListModels": _ANY,
    "/splitinfer.v1.ModelPoolService/FetchArtifact": _ANY,
    "/splitinfer.v1.ModelPoolService/PutArtifact": frozenset({ADMIN}),
    "/splitinfer.v1.ResultStoreService/PutResult": frozenset({CLUSTER, ADMIN}),
    "/splitinfer.v1.ResultStoreService/GetResult": _ANY,
    "/splitinfer.v1.ResultStoreService/QueryResults": _ANY,
    "/splitinfer.v1.ModelServerService/LoadPartition": frozenset({ADMIN}),
    "/splitinfer.v1.ModelServerService/UnloadPartition": frozenset({ADMIN}),
    "/splitinfer.v1.ModelServerService/": frozenset({CLUSTER, ADMIN}),
    "/splitinfer.v1.ResultSinkService/": frozenset({CLUSTER, ADMIN}),
}
#: Client certificate common names and the roles they carry.
CERTIFICATE_ROLES: Mapping[str, frozenset[str]] = {
    "splitinfer-cluster": frozenset({CLUSTER}),
    "splitinfer-admin": frozenset({ADMIN}),
}


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    roles: frozenset[str]

    def __str__(self) -> str:
        return f"{self.name} ({', '.join(sorted(self.roles)) or 'no roles'})"


def required_roles(method: str) -> frozenset[str] | None:
    """Roles that may call ``method`` (empty: anyone, unauthenticated too); None: any authenticated caller."""
    if method in POLICY:
        return POLICY[method]
    service = method.rsplit("/", 1)[0] + "/"
    return POLICY.get(service)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


class TokenTable:
    """Bearer tokens by digest: ``{"tokens": [{"sha256": ..., "name": ..., "roles": [...]}]}``."""

    def __init__(self, entries: Iterable[tuple[str, Identity]] = ()) -> None:
        self._by_digest = dict(entries)

    @classmethod
    def from_file(cls, path: Path) -> TokenTable:
        try:
            data = json.loads(path.read_text())
            entries = [
                (str(e["sha256"]), Identity(str(e["name"]), frozenset(str(r) for r in e["roles"])))
                for e in data["tokens"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(f"tokens file {path}: {exc}") from None
        for _, identity in entries:
            unknown = identity.roles - _ANY
            if unknown:
                raise InvalidArgument(f"tokens file {path}: {identity.name} has unknown roles {sorted(unknown)}")
        return cls(entries)

    def add(self, name: str, roles: Iterable[str]) -> str:
        """A new token for ``name``; only its digest is kept."""
        token = new_token()
        self._by_digest[_digest(token)] = Identity(name, frozenset(roles))
        return token

    def write(self, path: Path) -> None:
        entries = [{"sha256": d, "name": i.name, "roles": sorted(i.roles)} for d, i in sorted(self._by_digest.items())]
        path.write_text(json.dumps({"tokens": entries}, indent=1))

    def identify(self, token: str) -> Identity:
        identity = self._by_digest.get(_digest(token))
        if identity is None:
            raise Unauthenticated("the bearer token is not valid")
        return identity


def authorize(method: str, identity: Identity | None) -> None:
    """Raises Unauthenticated or PermissionDenied unless ``identity`` may call ``method``."""
    roles = required_roles(method)
    if roles is not None and not roles:
        return
    if identity is None:
        raise Unauthenticated(f"{method} needs credentials: a bearer token or a client certificate")
    if roles is None or identity.roles & roles:
        return
    raise PermissionDenied(f"{identity} may not call {method}; it needs one of the roles {sorted(roles)}")


def certificate_identity(common_name: str) -> Identity | None:
    roles = CERTIFICATE_ROLES.get(common_name)
    return Identity(common_name, roles) if roles else None
