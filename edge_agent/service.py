"""The agent's local API for apps: EdgeAgentService on a Unix socket or localhost."""

from __future__ import annotations

import grpc

from edge_agent.agent import EdgeAgent
from splitinfer.codecs import decode_tensor, encode_tensor
from splitinfer.errors import InvalidArgument, SplitInferError
from splitinfer.transport.channel import new_server
from splitinfer.transport.status import abort
from splitinfer.v1 import edge_agent_pb2, edge_agent_pb2_grpc

__all__ = ["EdgeAgentServicer", "serve_agent"]


class EdgeAgentServicer(edge_agent_pb2_grpc.EdgeAgentServiceServicer):
    def __init__(self, agent: EdgeAgent) -> None:
        self._agent = agent

    def Infer(
        self, request: edge_agent_pb2.EdgeAgentServiceInferRequest, context: grpc.ServicerContext
    ) -> edge_agent_pb2.EdgeAgentServiceInferResponse:
        try:
            if not request.model:
                raise InvalidArgument("the request needs a model name")
            inputs = {t.name: decode_tensor(t) for t in request.inputs}
            result = self._agent.infer(request.model, inputs, request.requirements, request.request_id)
        except SplitInferError as exc:
            abort(context, exc)
        return edge_agent_pb2.EdgeAgentServiceInferResponse(
            request_id=result.request_id,
            outputs=[encode_tensor(t, name) for name, t in result.outputs.items()],
            plan_summary=result.plan_summary,
            device_only_fallback=result.device_only_fallback,
            device_ms=result.device_ms,
            remote_ms=result.remote_ms,
            total_ms=result.total_ms,
        )


def serve_agent(agent: EdgeAgent, listen: str) -> tuple[grpc.Server, str]:
    """Serves the local API on ``listen`` ("unix:/path" or "host:port", port 0 for any); returns the server and
    the address to dial."""
    server = new_server(8)
    edge_agent_pb2_grpc.add_EdgeAgentServiceServicer_to_server(EdgeAgentServicer(agent), server)
    port = server.add_insecure_port(listen)
    server.start()
    if listen.startswith("unix:"):
        return server, listen
    return server, f"{listen.rsplit(':', 1)[0]}:{port}"
