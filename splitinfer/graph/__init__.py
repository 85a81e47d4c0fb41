"""The model graph: operations with FLOPs and bytes, and the cuts through it."""

from splitinfer.graph.cuts import CutPoint, bottlenecks, cut_points, narrow_cuts
from splitinfer.graph.model_graph import GraphNode, ModelGraph

__all__ = ["CutPoint", "GraphNode", "ModelGraph", "bottlenecks", "cut_points", "narrow_cuts"]
