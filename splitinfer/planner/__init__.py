"""The Execution Planner: per request, the variant, device cut, codec per crossing tensor and servers.

Solvers behind one interface (:class:`~splitinfer.planner.base.Solver`): ``DagSolver`` (exact, any
division shape, fast: DP over live tensors), ``CpSatSolver`` (exact up to a stated rounding bound, any
DAG), ``ChainSolver`` (exact, chain-shaped divisions), ``AutoSolver`` (the planner's default: the chain
solver for simple chains, the DAG solver otherwise), ``GreedySolver`` (heuristic), ``ExhaustiveSolver``
(oracle for small instances), and the baselines ``NeurosurgeonSolver`` and ``DadsSolver``. ``Planner`` adds
the plan cache and online calibration.
"""

from splitinfer.planner.base import Solver
from splitinfer.planner.baselines import DadsSolver, NeurosurgeonSolver
from splitinfer.planner.chain import AutoSolver, ChainSolver
from splitinfer.planner.cost import Assignment, Evaluation, evaluate
from splitinfer.planner.cpsat import CpSatSolver
from splitinfer.planner.dag import DagSolver
from splitinfer.planner.exhaustive import ExhaustiveSolver
from splitinfer.planner.greedy import GreedySolver
from splitinfer.planner.plan import CrossingChoice, Placement, Plan
from splitinfer.planner.problem import (
    CodecProfile,
    DeviceProfile,
    Edge,
    PartitionCost,
    PlanningProblem,
    Requirements,
    ServerProfile,
    VariantProfile,
)

__all__ = [
    "Assignment",
    "AutoSolver",
    "ChainSolver",
    "CodecProfile",
    "CpSatSolver",
    "CrossingChoice",
    "DadsSolver",
    "DagSolver",
    "DeviceProfile",
    "Edge",
    "Evaluation",
    "ExhaustiveSolver",
    "GreedySolver",
    "NeurosurgeonSolver",
    "PartitionCost",
    "Placement",
    "Plan",
    "PlanningProblem",
    "Requirements",
    "ServerProfile",
    "Solver",
    "VariantProfile",
    "evaluate",
]
