"""Routing decisions on the data plane: which replica gets the next request."""

from splitinfer.routing.balancer import ReplicaBalancer
from splitinfer.routing.routes import build_route, downstream_planned_s, entry_steps

__all__ = ["ReplicaBalancer", "build_route", "downstream_planned_s", "entry_steps"]
