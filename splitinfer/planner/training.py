"""Trains the learned planner's policy on the simulator (``make train-planner``).

Policy gradient on :class:`~splitinfer.sim.env.PlanningEnv` over random ResNet-18 phone worlds
(:func:`~splitinfer.sim.scenarios.training_scenario`: mean uplink from CAT1 to beyond Wi-Fi, fluctuating,
batteries anywhere). Episodes are rolled out with actions sampled from the policy (so batteries drain as
the policy would drain them); each request is its own decision (discount 0). Since the simulator knows
what every choice would have cost on the same request (``counterfactual_rewards``), the gradient is the
exact one of the expected reward over all actions rather than a sampled REINFORCE estimate (plain
REINFORCE with 99 actions and a large violation penalty collapsed to device-only in our runs). Choices that
cannot run are masked out, as they are when the policy plans; an entropy bonus decays to 0. A few minutes
on one CPU core; torch is used only here, the stored policy runs on numpy.

    python -m splitinfer.planner.training --out splitinfer/planner/policies/resnet18-phone.safetensors
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from splitinfer.planner.learned import DEFAULT_POLICY, FEATURES, Policy, default_strategies
from splitinfer.sim.env import PlanningEnv
from splitinfer.sim.scenarios import resnet18_variants, training_scenario

__all__ = ["train"]


def _net(inputs: int, hidden: int, outputs: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(inputs, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, outputs),
    )


def train(
    iterations: int = 260,
    episodes_per_iteration: int = 32,
    requests_per_episode: int = 24,
    hidden: int = 64,
    seed: int = 0,
    log: bool = True,
) -> Policy:
    torch.manual_seed(seed)
    variants = resnet18_variants()
    strategies = default_strategies()
    env = PlanningEnv(lambda rng: training_scenario(rng, requests_per_episode, variants), strategies)
    policy = _net(len(FEATURES), hidden, len(strategies))
    optimiser = torch.optim.Adam(policy.parameters(), lr=3e-3)
    rng = random.Random(seed)
    start = time.perf_counter()
    for iteration in range(iterations):
        observations, masks, rewards = [], [], []
        for _ in range(episodes_per_iteration):
            observation, _ = env.reset(seed=rng.randrange(1 << 30))
            mask = env.action_masks()  # the world's structure is fixed within an episode
            done = False
            while not done:
                with torch.no_grad():
                    logits = policy(torch.from_numpy(observation))
                    logits[~torch.from_numpy(mask)] = -1e9
                    action = int(torch.distributions.Categorical(logits=logits).sample())
                observations.append(observation)
                masks.append(mask)
                rewards.append(env.counterfactual_rewards())
                observation, _, done, _, _ = env.step(action)
        obs = torch.from_numpy(np.stack(observations))
        mask_t = torch.from_numpy(np.stack(masks))
        reward = torch.from_numpy(np.stack(rewards)).float()
        # Per request, each action's advantage over the mean of the valid ones, in units of their spread.
        valid = torch.where(mask_t, reward, torch.zeros_like(reward))
        count = mask_t.sum(-1, keepdim=True).clamp(min=1)
        mean = valid.sum(-1, keepdim=True) / count
        spread = (
            torch.where(mask_t, (reward - mean) ** 2, torch.zeros_like(reward)).sum(-1, keepdim=True) / count
        ).sqrt()
        advantage = torch.where(mask_t, (reward - mean) / (spread + 1e-6), torch.zeros_like(reward))
        for _ in range(4):  # a few steps on the same batch: its gradient is exact, not sampled
            logits = policy(obs).masked_fill(~mask_t, -1e9)
            probs = torch.softmax(logits, -1)
            entropy = -(probs * torch.log_softmax(logits, -1)).sum(-1).mean()
            entropy_weight = 0.05 * (1 - iteration / iterations)
            loss = -(probs * advantage).sum(-1).mean() - entropy_weight * entropy
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if log and (iteration % 10 == 0 or iteration == iterations - 1):
            chosen = (probs * torch.where(mask_t, reward, torch.zeros_like(reward))).sum(-1).mean()
            best = torch.where(mask_t, reward, torch.full_like(reward, -1e9)).max(-1).values.mean()
            print(
                f"iteration {iteration:4d}: expected reward {chosen:.3f} s (best in hindsight {best:.3f} s), "
                f"entropy {entropy:.2f}, {time.perf_counter() - start:.0f} s",
                flush=True,
            )
    layers = [m for m in policy if isinstance(m, torch.nn.Linear)]
    weights = {}
    for k, layer in enumerate(layers, start=1):
        weights[f"w{k}"] = layer.weight.detach().numpy().T.copy()
        weights[f"b{k}"] = layer.bias.detach().numpy().copy()
    meta = {
        "algorithm": "full-information policy gradient (simulator counterfactuals), entropy bonus, discount 0, "
        "masked actions",
        "iterations": str(iterations),
        "episodes_per_iteration": str(episodes_per_iteration),
        "requests_per_episode": str(requests_per_episode),
        "seed": str(seed),
        "trained_on": "ResNet-18 (8 partitions, fp32/fp16/int8) on a 4 GFLOP/s phone, edge 40 + cloud 150 "
        "GFLOP/s; uplink 0.08-30 Mbps fluctuating; budgets 0.5-2 s, accuracy >= 0.68",
        "train_seconds": f"{time.perf_counter() - start:.0f}",
    }
    return Policy(weights, strategies, meta)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_POLICY)
    parser.add_argument("--iterations", type=int, default=260)
    parser.add_argument("--episodes", type=int, default=32, help="episodes per iteration")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = train(args.iterations, args.episodes, seed=args.seed)
    policy.save(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
