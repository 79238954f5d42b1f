"""The `imitation` side of benchmarks/imitation_compare.py; runs in .venv-imitation, not in our venv.

imitation 1.0.1 pins gymnasium ~0.29 and stable-baselines3 ~2.2.1, so this script cannot import
vlm_reward_wrappers (gymnasium >= 1.1). It trains PPO with imitation's PreferenceComparisons and the
settings the driver passes, saves the policy's weights at the end of every iteration, and writes a JSON
summary; the driver evaluates the saved policies on the true reward with its own code and env, so both
libraries are scored identically.

    .venv-imitation/bin/python benchmarks/_imitation_side.py CONFIG.json OUT_DIR

CONFIG.json (written by the driver; steps are env steps):
    env_id, seed, steps_per_batch, batches, pairs_per_batch, pool (fragments are cut from the latest
    this many steps), fragment_length, epochs_per_update, reward_lr, reward_batch_size, ensemble_size,
    hidden (list of layer widths), beta (null: rational teacher), ppo_kwargs.
OUT_DIR receives <agent env steps>.pt (policy state_dicts) and summary.json.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import gymnasium as gym
import numpy as np
import torch
from imitation.algorithms import preference_comparisons as pc
from imitation.rewards import reward_nets
from imitation.util import networks
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

CARTPOLE_ID = "vlmrw/CartPoleAngle-v0"
#: Our env file imports only numpy and gymnasium's CartPoleEnv, which gymnasium 0.29 has too, so it is
#: loaded by path rather than copied: both sides train on the same dynamics.
CARTPOLE_FILE = Path(__file__).resolve().parents[1] / "vlm_reward_wrappers" / "envs" / "cartpole.py"


def register_cartpole() -> None:
    """Register RL-VLM-F's CartPole (100-step horizon) under the id our package gives it."""
    spec = importlib.util.spec_from_file_location("vlmrw_cartpole", CARTPOLE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if CARTPOLE_ID not in gym.registry:
        gym.register(CARTPOLE_ID, entry_point=module.AngleCartPoleEnv, max_episode_steps=100)


class StepCounter(gym.Wrapper):
    """Counts every env step, including those imitation takes outside PPO's training to gather fragments."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        return self.env.step(action)


def make_reward_net(venv, config: Dict[str, Any]) -> reward_nets.RewardNet:
    """An ensemble of MLPs shaped like our observation reward model (reward of the state after the
    step, leaky ReLU hidden layers), each normalised by imitation's RunningNorm.

    Differences left in: no tanh on the output, and normalisation per member with running statistics
    (imitation cannot wrap a RewardEnsemble in NormalizedRewardNet) where ours standardises the
    ensemble mean over recent inputs after each update.
    """
    members = [
        reward_nets.NormalizedRewardNet(
            reward_nets.BasicRewardNet(
                venv.observation_space, venv.action_space, use_state=False, use_action=False, use_next_state=True,
                hid_sizes=tuple(config["hidden"]), activation=torch.nn.LeakyReLU,
            ),
            networks.RunningNorm,
        )
        for _ in range(config["ensemble_size"])
    ]
    ensemble = reward_nets.RewardEnsemble(venv.observation_space, venv.action_space, members)
    # alpha 0: the agent's reward is the ensemble mean, as in ours.
    return reward_nets.AddSTDRewardWrapper(ensemble, default_alpha=0.0)


def run(config: Dict[str, Any], out: Path) -> Dict[str, Any]:
    """Train one agent with PreferenceComparisons; return the summary written to ``out/summary.json``."""
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    seed = config["seed"]
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    counter = StepCounter(gym.make(config["env_id"]))
    venv = DummyVecEnv([lambda: counter])
    venv.seed(seed)
    agent = PPO("MlpPolicy", venv, seed=seed, verbose=0, **config["ppo_kwargs"])
    reward_net = make_reward_net(venv, config)
    steps_per_batch, batches = config["steps_per_batch"], config["batches"]
    pairs, length = config["pairs_per_batch"], config["fragment_length"]
    beta = config["beta"]
    # temperature 0 is imitation's rational teacher; Boltzmann with our beta is temperature 1 / beta
    # (the same model for 1-step fragments; over longer fragments it applies to sums of rewards).
    gatherer = pc.SyntheticGatherer(temperature=0.0 if beta is None else 1.0 / beta, rng=rng)
    trainer = pc.EnsembleTrainer(
        pc.PreferenceModel(reward_net), pc.CrossEntropyRewardLoss(), rng=rng,
        batch_size=config["reward_batch_size"], epochs=config["epochs_per_update"], lr=config["reward_lr"],
    )
    generator = pc.AgentTrainer(agent, reward_net, venv, rng=rng, exploration_frac=0.0)
    algorithm = pc.PreferenceComparisons(
        generator, reward_net,
        # imitation gathers once before training and once per iteration, and trains the agent
        # total_timesteps / num_iterations steps after each gathering: batches - 1 iterations of
        # steps_per_batch make batches gatherings and batches * steps_per_batch agent steps.
        num_iterations=batches - 1,
        fragmenter=pc.RandomFragmenter(rng=rng, warning_threshold=0),
        preference_gatherer=gatherer,
        reward_trainer=trainer,
        fragment_length=length,
        # Fragments are cut from the latest `pool` transitions, the pool ours samples frames from.
        transition_oversampling=config["pool"] / (2 * pairs * length),
        initial_comparison_frac=1.0 / batches,
        # Ours has no longer first update; imitation's default multiplies the first one's epochs by 200.
        initial_epoch_multiplier=1.0,
        query_schedule="constant",
    )
    checkpoints: List[Dict[str, float]] = []
    started = time.perf_counter()

    def checkpoint(_iteration: int = -1) -> None:
        # Saving takes about a millisecond: it is left in the wall time.
        wall_s = time.perf_counter() - started
        steps = int(agent.num_timesteps)
        torch.save(agent.policy.state_dict(), out / f"{steps}.pt")
        checkpoints.append({"steps": steps, "wall_s": wall_s, "queries": len(algorithm.dataset)})

    checkpoint()
    stats = algorithm.train(
        total_timesteps=(batches - 1) * steps_per_batch,
        total_comparisons=batches * pairs,
        callback=checkpoint,
    )
    summary = {
        "checkpoints": checkpoints,
        "wall_s": checkpoints[-1]["wall_s"],
        "queries": len(algorithm.dataset),
        "agent_steps": int(agent.num_timesteps),
        "env_steps": counter.steps,
        "reward_accuracy": float(stats["reward_accuracy"]),
        "ties": int(np.sum(algorithm.dataset.preferences == 0.5)),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    register_cartpole()
    run(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
