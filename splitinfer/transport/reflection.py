"""gRPC server reflection under both protocol names: ``grpc.reflection.v1`` (what grpcurl, Postman and current
clients ask first) and ``grpc.reflection.v1alpha`` (older clients).

grpcio-reflection ships only the v1alpha service. The v1 protocol is the same messages under a new package
(every field and number unchanged), so the v1 method is served by the same servicer with the v1alpha
(de)serializers: the bytes on the wire are identical.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer as AsyncReflectionServicer

__all__ = ["HEALTH_SERVICE", "V1ALPHA_SERVICE", "V1_SERVICE", "enable_reflection"]

V1_SERVICE = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE = reflection.SERVICE_NAME
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def enable_reflection(server: grpc.Server | grpc.aio.Server, service_names: Iterable[str]) -> tuple[str, ...]:
    """Serves reflection (v1 and v1alpha) on ``server`` for ``service_names`` plus health and reflection
    itself; returns the names listed."""
    names = tuple(dict.fromkeys([*service_names, HEALTH_SERVICE, V1_SERVICE, V1ALPHA_SERVICE]))
    servicer: reflection.ReflectionServicer | AsyncReflectionServicer
    if isinstance(server, grpc.aio.Server):
        servicer = AsyncReflectionServicer(names)
    else:
        servicer = reflection.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)  # v1alpha, by the library
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": handler}),)
    )
    return names
