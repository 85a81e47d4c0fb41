"""Roles and tokens: who may call what (pure; the interceptor is exercised in tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitinfer.errors import InvalidArgument, PermissionDenied, Unauthenticated
from splitinfer.security.auth import ADMIN, CLUSTER, DEVICE, Identity, TokenTable, authorize, certificate_identity

DEVICE_ID = Identity("phone", frozenset({DEVICE}))
CLUSTER_ID = Identity("node", frozenset({CLUSTER}))
ADMIN_ID = Identity("ops", frozenset({ADMIN}))


@pytest.mark.parametrize(
    ("method", "allowed"),
    [
        ("/splitinfer.v1.FrontEndService/Infer", {DEVICE_ID, ADMIN_ID}),
        ("/inference.GRPCInferenceService/ModelInfer", {DEVICE_ID, ADMIN_ID}),
        ("/splitinfer.v1.ModelServerService/Process", {CLUSTER_ID, ADMIN_ID}),
        ("/splitinfer.v1.ModelServerService/LoadPartition", {ADMIN_ID}),
        ("/splitinfer.v1.ModelServerService/UnloadPartition", {ADMIN_ID}),
        ("/splitinfer.v1.ModelPoolService/PutArtifact", {ADMIN_ID}),
        ("/splitinfer.v1.ModelPoolService/FetchArtifact", {DEVICE_ID, CLUSTER_ID, ADMIN_ID}),
        ("/splitinfer.v1.ResultStoreService/PutResult", {CLUSTER_ID, ADMIN_ID}),
        ("/splitinfer.v1.ResultStoreService/GetResult", {DEVICE_ID, CLUSTER_ID, ADMIN_ID}),
        # Operators deploy and remove models; the traffic mix and divisions are the cluster's business.
        ("/inference.GRPCInferenceService/RepositoryModelLoad", {ADMIN_ID}),
        ("/inference.GRPCInferenceService/RepositoryModelUnload", {ADMIN_ID}),
        ("/inference.GRPCInferenceService/ModelConfig", {DEVICE_ID, ADMIN_ID}),
        ("/splitinfer.v1.FrontEndService/GetFrontEndStatus", {CLUSTER_ID, ADMIN_ID}),
        ("/splitinfer.v1.FrontEndService/GetModelMetadata", {DEVICE_ID, ADMIN_ID}),
    ],
)
def test_each_rpc_admits_exactly_its_roles(method: str, allowed: set[Identity]) -> None:
    for identity in (DEVICE_ID, CLUSTER_ID, ADMIN_ID):
        if identity in allowed:
            authorize(method, identity)
        else:
            with pytest.raises(PermissionDenied, match="needs one of the roles"):
                authorize(method, identity)
    with pytest.raises(Unauthenticated):
        authorize(method, None)


def test_health_is_open_and_unknown_methods_need_some_identity() -> None:
    authorize("/grpc.health.v1.Health/Check", None)
    authorize("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", None)
    authorize("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", None)
    with pytest.raises(Unauthenticated):
        authorize("/some.Other/Thing", None)
    authorize("/some.Other/Thing", DEVICE_ID)


def test_tokens_are_stored_as_digests_and_identify_their_holder(tmp_path: Path) -> None:
    table = TokenTable()
    token = table.add("phone-1", [DEVICE])
    table.write(tmp_path / "tokens.json")
    assert token not in (tmp_path / "tokens.json").read_text()
    loaded = TokenTable.from_file(tmp_path / "tokens.json")
    assert loaded.identify(token) == Identity("phone-1", frozenset({DEVICE}))
    with pytest.raises(Unauthenticated):
        loaded.identify(token + "x")


def test_bad_tokens_files_are_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text('{"tokens": [{"sha256": "ab", "name": "x", "roles": ["root"]}]}')
    with pytest.raises(InvalidArgument, match="unknown roles"):
        TokenTable.from_file(tmp_path / "t.json")
    (tmp_path / "t.json").write_text("{")
    with pytest.raises(InvalidArgument, match="tokens file"):
        TokenTable.from_file(tmp_path / "t.json")


def test_certificate_names_map_to_roles() -> None:
    assert certificate_identity("splitinfer-cluster") == Identity("splitinfer-cluster", frozenset({CLUSTER}))
    assert certificate_identity("splitinfer-admin") == Identity("splitinfer-admin", frozenset({ADMIN}))
    assert certificate_identity("someone-else") is None
