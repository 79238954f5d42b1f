"""How well does the reward CNN rank frames at each reward image size? Offline, perfect labels.

    python benchmarks/reward_image_size.py drawer-open --sizes 64 128 --pairs 320 1280   # about 40 min
    python benchmarks/reward_image_size.py rope --pairs 400
    python benchmarks/reward_image_size.py drawer-open --camera topview --sizes 64 --pairs 320
    python benchmarks/reward_image_size.py cloth-fold --nets cnn resnet18 --sizes 64 --pairs 300

Frames come from a scripted policy with action noise of several sizes, so true rewards span random to
solved: MetaWorld's own policy with the robot shown (every 5th step kept), or this package's cloth-fold
and rope scripts (every step). Three episodes in four train the reward
model on random pairs labelled by the true reward (as the perfect teacher labels them), with 8 updates as a
run's schedule gives; the fourth episode of each four is held out. Reported: the held-out rewards'
correlation with the true reward, the accuracy of held-out pairs, the same among the held-out frames in the
best quarter by true reward (the frames a nearly solved agent needs ranked), and the last update's train
accuracy.
``--epochs`` sets the passes over the labels per update: RL-VLM-F's 10 for 250 updates of a 1,000,000-step
run is many more gradient steps than 10 for the 8 updates of a 40,000-step one.
Rows are appended to ``benchmarks/results/reward_image_size.jsonl``; the table is rewritten from all of
them in ``reward_image_size.md`` (the latest of each setting).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402

from vlm_reward_wrappers.config import REWARD_NETS  # noqa: E402
from vlm_reward_wrappers.envs import scripted  # noqa: E402
from vlm_reward_wrappers.frames import resize_frame  # noqa: E402
from vlm_reward_wrappers.preference_dataset import PreferenceDataset  # noqa: E402
from vlm_reward_wrappers.reward_model import BradleyTerryTrainer, RewardModel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NOISE = (0.0, 0.3, 0.6, 1.0, 2.0, 5.0)  # action noise per episode, in turn: scripted to nearly random
#: The deformable tasks: their envs and scripts (the rest are MetaWorld task names).
SCRIPTS = {"cloth-fold": ("vlmrw/ClothFold-v0", scripted.fold_cloth),
           "rope": ("vlmrw/RopeStraighten-v0", scripted.straighten_rope)}


def scripted_frames(task: str, episodes: int, camera: Optional[str] = None):
    """Rendered frames (N, H, W, 3), true rewards (N,), episode numbers (N,) and observations (N, D) of a
    scripted policy with
    Gaussian action noise: MetaWorld's own policy (every 5th step of 500; seen by ``camera``, a MetaWorld
    camera name, or RL-VLM-F's when None) or this package's cloth-fold and rope scripts (every step; random
    actions once the script is done)."""
    rng = np.random.default_rng(0)
    if task in SCRIPTS:
        env_id, script_of = SCRIPTS[task]
        env = gym.make(env_id, render_mode="rgb_array")
        every, horizon = 1, env.spec.max_episode_steps
    else:
        env = gym.make(f"vlmrw/MetaWorld-{task}-v0", render_mode="rgb_array", hide_robot=False, camera=camera)
        policy, script_of = scripted.metaworld_policy(task), None
        every, horizon = 5, 500
    frames, rewards, episode, observations = [], [], [], []
    for ep in range(episodes):
        noise = NOISE[ep % len(NOISE)]
        obs, _ = env.reset(seed=ep)
        env.action_space.seed(ep)  # the random actions after a script ends: the same frames on every run
        script = script_of(env) if script_of else None
        for t in range(horizon):
            if script is None:
                planned = policy.get_action(obs)
            else:
                planned = next(script, None)
                planned = env.action_space.sample() if planned is None else planned
            action = np.clip(planned + noise * rng.normal(size=env.action_space.shape), env.action_space.low,
                             env.action_space.high)
            obs, reward, terminated, truncated, _ = env.step(action)
            if t % every == 0:
                frames.append(env.render())
                rewards.append(reward)
                episode.append(ep)
                observations.append(obs)
            if terminated or truncated:
                break
    env.close()
    return np.array(frames), np.array(rewards), np.array(episode), np.array(observations, dtype=np.float32)


def pair_accuracy(predicted: np.ndarray, truth: np.ndarray, rng: np.random.Generator, pairs: int = 4000) -> float:
    """Share of random pairs (of different true reward) that ``predicted`` orders as ``truth`` does."""
    a, b = rng.choice(len(truth), pairs), rng.choice(len(truth), pairs)
    differ = truth[a] != truth[b]
    return float(((predicted[b] > predicted[a]) == (truth[b] > truth[a]))[differ].mean())


def rank_quality(frames, rewards, episode, size: int, pairs: int, epochs: int = 10, updates: int = 8,
                 seed: int = 0, net: str = "cnn") -> dict:
    """Train a ``net`` reward model at ``size`` px on ``pairs`` perfect labels, ``updates`` times ``epochs``
    passes; score it on held-out episodes."""
    rng = np.random.default_rng(seed)
    small = np.stack([resize_frame(f, size) for f in frames])
    held_out = episode % 4 == 3
    train_idx, test_idx = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    model = RewardModel("frame", (size, size, 3), reward_net=net, seed=seed)
    trainer = BradleyTerryTrainer(model, epochs=epochs, seed=seed)
    data = PreferenceDataset()
    for i, j in zip(rng.choice(train_idx, pairs), rng.choice(train_idx, pairs)):
        if rewards[i] != rewards[j]:
            data.add(small[i], small[j], int(rewards[j] > rewards[i]))
    started = time.process_time()
    for _ in range(updates):
        stats = trainer.train(data)
    predicted, truth = model.predict(small[test_idx]), rewards[test_idx]
    best = truth >= np.quantile(truth, 0.75)
    return dict(net=net, size=size, pairs=len(data), epochs=epochs,
                correlation=float(np.corrcoef(predicted, truth)[0, 1]), pair_accuracy=pair_accuracy(predicted, truth, rng),
                best_quarter_accuracy=pair_accuracy(predicted[best], truth[best], rng),
                train_accuracy=float(stats.accuracy), train_cpu_s=time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", nargs="?", default="drawer-open",
                        help="a MetaWorld task with a scripted policy, cloth-fold or rope")
    parser.add_argument("--nets", nargs="+", default=["cnn"], choices=REWARD_NETS,
                        help="reward nets: RL-VLM-F's small CNN, its ResNet-18 (cloth, rope)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--pairs", nargs="+", type=int, default=[320, 1280])
    parser.add_argument("--epochs", nargs="+", type=int, default=[10],
                        help="passes over the labels per update (RL-VLM-F: 10 on MetaWorld)")
    parser.add_argument("--episodes", type=int, default=None,
                        help="default: 24 (MetaWorld, 100 frames each), 600 (cloth-fold), 150 (rope, 5 steps each)")
    parser.add_argument("--camera", default=None,
                        help="MetaWorld only: a MetaWorld camera name (e.g. topview, corner) instead of RL-VLM-F's")
    args = parser.parse_args()
    if args.camera and args.task in SCRIPTS:
        parser.error("--camera is for MetaWorld tasks")
    torch.set_num_threads(1)
    episodes = args.episodes or {"cloth-fold": 600, "rope": 150}.get(args.task, 24)
    frames, rewards, episode, _ = scripted_frames(args.task, episodes, args.camera)
    print(f"{len(frames)} frames, true reward {rewards.min():.2f} to {rewards.max():.2f}", flush=True)
    path = RESULTS / "reward_image_size.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    for net, size, pairs, epochs in itertools.product(args.nets, args.sizes, args.pairs, args.epochs):
        row = dict(task=args.task, camera=args.camera, frames=len(frames),
                   **rank_quality(frames, rewards, episode, size, pairs, epochs, net=net))
        print(row, flush=True)
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    # One row per setting: a later measurement of the same setting replaces the earlier one.
    latest = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            latest[(r["task"], r.get("camera"), r.get("net", "cnn"), r["size"], r["pairs"], r["epochs"])] = r
    rows = list(latest.values())
    table = ["| task | camera | reward net | reward image px | labelled pairs | epochs per update | held-out corr. with "
             "true reward | held-out pair accuracy | among the best quarter | train accuracy | train CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['task']} | {r.get('camera') or 'RL-VLM-F'} | {r.get('net', 'cnn')} | {r['size']} | {r['pairs']} | "
              f"{r['epochs']} | {r['correlation']:.2f} | {r['pair_accuracy']:.2f} | "
              f"{'n/a' if 'best_quarter_accuracy' not in r else format(r['best_quarter_accuracy'], '.2f')} | "
              f"{r['train_accuracy']:.2f} | {r['train_cpu_s']:.0f} |" for r in rows]
    (RESULTS / "reward_image_size.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
