"""The FrontEndService servicer (Plan today; Infer arrives with the front-end)."""

from __future__ import annotations

import grpc

from splitinfer.errors import InvalidArgument, SplitInferError
from splitinfer.frontend.planning import PlanningService
from splitinfer.transport.status import abort
from splitinfer.v1 import frontend_pb2, frontend_pb2_grpc

__all__ = ["FrontEndServicer"]


class FrontEndServicer(frontend_pb2_grpc.FrontEndServiceServicer):
    def __init__(self, planning: PlanningService) -> None:
        self._planning = planning

    def Plan(self, request: frontend_pb2.PlanRequest, context: grpc.ServicerContext) -> frontend_pb2.PlanResponse:
        try:
            if not request.model:
                raise InvalidArgument("PlanRequest needs a model name")
            plan = self._planning.plan(request.model, request.device, request.requirements)
        except SplitInferError as exc:
            abort(context, exc)
        return frontend_pb2.PlanResponse(plan=plan.to_proto())
