"""The scenario simulator as a Gymnasium environment, to train the learned planner on.

One episode is one scenario run (:class:`~splitinfer.sim.simulator.ScenarioRun`): a short trace of requests
from a few devices. The observation is the next request's conditions as its device believes them
(:func:`splitinfer.planner.learned.features`); the action picks one of the learned planner's strategies; the
reward is the negative of what the choice cost under the conditions that actually happened: latency plus the
request's energy weight times device energy, plus ``violation_penalty_s`` when the request missed its latency
budget or accuracy floor. ``counterfactual_rewards()`` gives the reward of every action for the same request
(the simulator knows what would have happened), for full-information training. A strategy that cannot run in
the problem is replaced by device-only with the most accurate variant and pays ``invalid_penalty_s``
(``action_masks()`` says which are valid, for maskable learners). Battery drain carries over between the
requests of an episode.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from splitinfer.planner.cost import Assignment, evaluate
from splitinfer.planner.learned import FEATURE_BOUND, FEATURES, Strategy, default_strategies, features
from splitinfer.sim.simulator import Scenario, ScenarioRun

__all__ = ["PlanningEnv"]


class PlanningEnv(gymnasium.Env[np.ndarray, int]):
    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        scenarios: Callable[[random.Random], Scenario],
        strategies: tuple[Strategy, ...] | None = None,
        *,
        violation_penalty_s: float = 100.0,
        invalid_penalty_s: float = 5.0,
    ) -> None:
        self.scenarios = scenarios
        self.strategies = strategies or default_strategies()
        self.violation_penalty_s = violation_penalty_s
        self.invalid_penalty_s = invalid_penalty_s
        self.observation_space = spaces.Box(-FEATURE_BOUND, FEATURE_BOUND, shape=(len(FEATURES),), dtype=np.float32)
        self.action_space = spaces.Discrete(len(self.strategies))  # type: ignore[assignment]
        self._rng = random.Random(0)
        self._run: ScenarioRun | None = None
        self._assignments: list[Assignment | None] = []

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._rng = random.Random(seed)
        self._run = ScenarioRun(self.scenarios(self._rng))
        # A world's variants, servers and device are fixed within an episode: each strategy's plan is too.
        problem = self._run.believed_problem()
        self._assignments = [s.assignment(problem) for s in self.strategies]
        return features(problem), {}

    def action_masks(self) -> np.ndarray:
        assert self._run is not None, "reset() first"
        return np.asarray([a is not None for a in self._assignments])

    def counterfactual_rewards(self) -> np.ndarray:
        """The reward every action would get on the next request (what actually happens is drawn already,
        so these are the rewards of the same request); -inf for actions that cannot run. The simulator
        can answer this, a real deployment cannot: it is what full-information training uses."""
        run = self._run
        assert run is not None, "reset() first"
        actual = run.actual_problem()
        out = np.full(len(self.strategies), -np.inf)
        for k, a in enumerate(self._assignments):
            if a is not None:
                outcome = evaluate(actual, a)
                out[k] = -(outcome.objective + self.violation_penalty_s * run.violated(outcome))
        return out

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        run = self._run
        assert run is not None, "reset() first"
        problem = run.believed_problem()
        assignment = self._assignments[int(action)]
        penalty = 0.0
        if assignment is None:
            penalty = self.invalid_penalty_s
            assignment = _device_only(problem)
        actual = run.actual_problem()
        outcome = evaluate(actual, assignment)
        violated = run.violated(outcome)
        reward = -(outcome.objective + self.violation_penalty_s * violated + penalty)
        info = {"latency_ms": outcome.latency_s * 1e3, "energy_mj": outcome.energy_j * 1e3, "violated": violated}
        run.advance(outcome)
        terminated = run.done
        observation = np.zeros(len(FEATURES), np.float32) if terminated else features(run.believed_problem())
        return observation, float(reward), terminated, False, info


def _device_only(problem: Any) -> Assignment:
    v = max(range(len(problem.variants)), key=lambda k: problem.variants[k].accuracy)
    return Assignment(v, (-1,) * len(problem.variants[v].partitions), ())
