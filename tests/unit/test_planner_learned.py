"""The learned planner: strategies, the stored policy (safetensors, no pickle), the solver and its environment."""

from __future__ import annotations

import random
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from splitinfer.codecs import CodecSpec
from splitinfer.planner import DeviceProfile, PlanningProblem, Requirements, ServerProfile
from splitinfer.planner.cost import DEVICE
from splitinfer.planner.learned import (
    DEFAULT_POLICY,
    FEATURES,
    HEAD_STEPS,
    LearnedSolver,
    Policy,
    Strategy,
    default_strategies,
    features,
)
from splitinfer.planner.profiles import DEFAULT_CODECS
from splitinfer.sim.env import PlanningEnv
from splitinfer.sim.scenarios import phone_scenario, three_variants, training_scenario
from tests.unit.test_planner import _cnn

VARIANTS = three_variants(_cnn())


def _problem(**device: object) -> PlanningProblem:
    base = DeviceProfile(flops=4e9, uplink_mbps=5.85, downlink_mbps=17, rtt_ms=30, battery_percent=60, charging=False)
    return PlanningProblem(
        variants=VARIANTS,
        device=replace(base, **device),  # type: ignore[arg-type]
        servers=(ServerProfile("edge:7000", 4e10), ServerProfile("cloud:7000", 1.5e11)),
        codecs=DEFAULT_CODECS,
        requirements=Requirements(max_latency_ms=1500, min_accuracy=0.85),
    )


def test_strategies_map_onto_any_problem() -> None:
    problem = _problem()
    n = len(VARIANTS[0].partitions)
    device_only = Strategy(0, HEAD_STEPS, "none").assignment(problem)
    assert device_only is not None and device_only.locations == (DEVICE,) * n and device_only.codecs == ()
    server_only = Strategy(1, 0, "lz4").assignment(problem)
    assert server_only is not None and problem.variants[server_only.variant].variant == "fp16"
    assert set(server_only.locations) == {1}  # the faster server runs the whole server part
    assert dict(server_only.codecs) == {"input": 1, "out": 0}  # what comes back travels as is
    half = Strategy(0, HEAD_STEPS // 2, "int8+zstd").assignment(problem)
    assert (
        half is not None and half.locations[: n // 2] == (DEVICE,) * (n // 2) and DEVICE not in half.locations[n // 2 :]
    )
    assert Strategy(3, 0, "none").assignment(problem) is None  # there are three variants, not four
    assert Strategy(0, 0, "brotli").assignment(problem) is None  # no such codec in the problem
    thin = _problem(computes=False)
    assert Strategy(0, 2, "none").assignment(thin) is None and Strategy(0, 0, "none").assignment(thin) is not None
    tiny = _problem(memory_bytes=1)
    assert Strategy(0, HEAD_STEPS, "none").assignment(tiny) is None


def test_partitions_no_single_server_hosts_are_spread() -> None:
    problem = _problem()
    names = [p.name for p in VARIANTS[0].partitions]
    edge = frozenset(f"cnn@large/{p}" for p in names[:2])
    cloud = frozenset(f"cnn@large/{p}" for p in names[2:])
    problem = replace(
        problem, servers=(ServerProfile("edge:7000", 4e10, hosts=edge), ServerProfile("c:1", 1.5e11, hosts=cloud))
    )
    a = Strategy(0, 0, "none").assignment(problem)
    assert a is not None and a.locations == (0, 0, 1, 1)
    assert Strategy(1, 0, "none").assignment(problem) is None  # nobody hosts fp16


def test_the_committed_policy_is_safetensors_and_plans() -> None:
    head = DEFAULT_POLICY.read_bytes()[:8]
    assert int.from_bytes(head, "little") < 1 << 20  # a safetensors JSON header length, not a pickle opcode
    policy = Policy.load()
    assert len(policy.strategies) == len(default_strategies()) and policy.meta["format"].startswith("splitinfer")
    solver = LearnedSolver(policy)
    for mbps in (0.13, 1.1, 5.85, 18.88):
        problem = _problem(uplink_mbps=mbps)
        plan = solver.solve(problem)
        assert plan.solver.startswith("learned") and plan.model == "cnn"
        assert plan.predicted_latency_ms > 0


def test_policy_round_trips_and_refuses_other_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    strategies = default_strategies()[:5]
    hidden = 8
    weights = {
        "w1": rng.normal(size=(len(FEATURES), hidden)).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "w2": rng.normal(size=(hidden, hidden)).astype(np.float32),
        "b2": np.zeros(hidden, np.float32),
        "w3": rng.normal(size=(hidden, 5)).astype(np.float32),
        "b3": np.zeros(5, np.float32),
    }
    policy = Policy(weights, strategies, {})
    policy.save(tmp_path / "p.safetensors", "test")
    back = Policy.load(tmp_path / "p.safetensors")
    x = features(_problem())
    assert back.strategies == strategies and np.allclose(back.logits(x), policy.logits(x))
    (tmp_path / "junk.safetensors").write_bytes(b"\x80\x04not a policy")
    with pytest.raises(Exception):  # noqa: B017 - any refusal; never an unpickling
        Policy.load(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="do not match"):
        Policy({**weights, "w3": weights["w3"][:, :4], "b3": weights["b3"][:4]}, strategies, {})


def test_a_problem_no_strategy_fits_falls_back_to_the_exact_solver() -> None:
    problem = replace(_problem(computes=False), codecs=DEFAULT_CODECS[1:2])  # only lz4: server-only fits
    plan = LearnedSolver().solve(problem)
    assert plan.solver.startswith("learned") and not plan.device_partitions
    odd = replace(_problem(), codecs=(replace(DEFAULT_CODECS[0], codec=CodecSpec.parse("zstd")),))
    assert LearnedSolver().solve(odd).solver == "dag-dp"  # no strategy names a codec the problem has


def test_the_environment_follows_the_gymnasium_api() -> None:
    env = PlanningEnv(lambda rng: phone_scenario("t", rng.uniform(0.5, 10), 6, variants=VARIANTS, devices=2))
    check_env(env, skip_render_check=True)
    observation, _ = env.reset(seed=3)
    assert observation.shape == (len(FEATURES),) and env.action_space.n == len(default_strategies())  # type: ignore[attr-defined]
    mask = env.action_masks()
    counterfactual = env.counterfactual_rewards()
    action = int(np.argmax(counterfactual))
    _, reward, _, _, info = env.step(action)
    assert mask[action] and reward == pytest.approx(counterfactual[action])
    assert np.isneginf(counterfactual[~mask]).all() and info["latency_ms"] > 0


def test_the_trained_policy_beats_a_random_choice_in_its_worlds() -> None:
    """On worlds drawn like its training worlds (other seeds), the policy's requests cost less than those
    of a uniformly random runnable strategy: it learned something (this fails for an untrained policy)."""
    env = PlanningEnv(lambda rng: training_scenario(rng, 12, VARIANTS))
    solver = LearnedSolver()
    rng = random.Random(12345)
    ours, chance = [], []
    for episode in range(20):
        observation, _ = env.reset(seed=1000 + episode)
        done = False
        while not done:
            rewards = env.counterfactual_rewards()
            valid = np.flatnonzero(np.isfinite(rewards))
            logits = solver.policy.logits(observation)
            pick = int(valid[np.argmax(logits[valid])])
            ours.append(rewards[pick])
            chance.append(statistics.fmean(rewards[valid]))
            observation, _, done, _, _ = env.step(int(rng.choice(list(valid))))
    assert statistics.fmean(ours) > statistics.fmean(chance)


def test_features_are_finite_at_the_extremes() -> None:
    for device in ({"uplink_mbps": 0.0, "downlink_mbps": 0.0}, {"uplink_mbps": 1e6, "flops": 0.0}, {"rtt_ms": 0.0}):
        assert np.isfinite(features(_problem(**device))).all()
    assert features(replace(_problem(), requirements=Requirements())).shape == (len(FEATURES),)
