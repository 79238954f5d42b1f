"""Which way of training survives a VLM's noise? Offline: a reward model trained on the simulated VLM
teacher's labels by each method, ranked on held-out frames.

    python benchmarks/noise_probe.py rope --input observation
    python benchmarks/noise_probe.py cloth-fold --input frame --queries 300 --seeds 0

Frames, observations and true rewards come from ``reward_image_size.py``'s scripted policies with action
noise; three episodes in four are labelled, the fourth is held out. Every method spends the same number of
queries on random pairs of labelled frames, and trains 8 updates of 10 epochs, as a run's schedule would:

- ``bt``: RL-VLM-F's Bradley-Terry, -1 answers dropped.
- ``ties``: -1 answers kept as ties (target 0.5): the teacher abstains on pairs it finds alike.
- ``smooth``: label smoothing, targets 0.9 / 0.1.
- ``swap``: each pair asked both ways round (two queries), kept where the answers agree.
- ``swap-ties``: as ``swap``, and pairs whose answers disagree (or abstain) kept as ties.
- ``perfect``: ``bt`` on the perfect teacher's labels: the ceiling.

Reported, median over seeds: held-out pair accuracy, the same on the closest quarter of pairs by true-reward
gap (where the teacher guesses), among the best quarter of frames (what a nearly solved agent needs ranked),
the correlation with the true reward, and the accuracy of the labels kept (ties left out). Rows are appended
to ``benchmarks/results/noise_probe.jsonl``; ``noise_probe.md`` is rewritten from all of them. Rows of methods
tried and removed stay there with the commit that ran them (``robust``: Bradley-Terry whose likelihood expects
a quarter of the answers to be guesses, ``label_noise=0.25``, commit 2ca5631; no clear gain).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from benchmarks.harness import STARTED_ON_COMMIT  # noqa: E402
from benchmarks.reward_image_size import pair_accuracy, scripted_frames  # noqa: E402
from vlm_reward_wrappers.frames import resize_frame  # noqa: E402
from vlm_reward_wrappers.labelers import OracleLabeler, SimulatedVLMLabeler  # noqa: E402
from vlm_reward_wrappers.labelers.base import Labeler, Query  # noqa: E402
from vlm_reward_wrappers.label_store import FIRST, NO_PREFERENCE, SECOND  # noqa: E402
from vlm_reward_wrappers.preference_dataset import PreferenceDataset  # noqa: E402
from vlm_reward_wrappers.reward_model import BradleyTerryTrainer, RewardModel  # noqa: E402

RESULTS = HERE / "results"
GOAL = "the goal"
#: A label as the dataset takes it: (preference, soft target or None); None drops the pair.
Label = Tuple[int, float]


def _ask(labeler: Labeler, frames: np.ndarray, rewards: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    queries = [Query(frames[i], frames[j], float(rewards[i]), float(rewards[j])) for i, j in pairs]
    return np.array([answer.preference for answer in labeler.compare(queries, GOAL)])


def _hard(preference: int) -> List[Label]:
    return [] if preference == NO_PREFERENCE else [(preference, None)]


def label_pairs(method: str, labeler: Labeler, frames: np.ndarray, rewards: np.ndarray, pairs: np.ndarray
                ) -> List[List[Label]]:
    """Each pair's labels under ``method`` (an empty list: the pair is dropped); swap methods spend two
    queries a pair."""
    if method in ("bt", "perfect"):
        return [_hard(p) for p in _ask(labeler, frames, rewards, pairs)]
    if method == "ties":
        return [[(SECOND, 0.5)] if p == NO_PREFERENCE else [(p, None)] for p in _ask(labeler, frames, rewards, pairs)]
    if method == "smooth":
        return [[] if p == NO_PREFERENCE else [(p, 0.9 if p == SECOND else 0.1)]
                for p in _ask(labeler, frames, rewards, pairs)]
    forward, backward = _ask(labeler, frames, rewards, pairs), _ask(labeler, frames, rewards, pairs[:, ::-1])
    labels = []
    for p, q in zip(forward, backward):
        agree = p != NO_PREFERENCE and q != NO_PREFERENCE and p != q  # q answers the pair turned round
        if agree:
            labels.append([(p, None)])
        else:
            labels.append([(SECOND, 0.5)] if method == "swap-ties" else [])
    return labels


METHODS: Dict[str, Tuple[int, Callable[[int], Labeler]]] = {
    # name: (queries per pair, the teacher of a seed)
    "bt": (1, lambda seed: SimulatedVLMLabeler(0.75, seed=seed)),
    "ties": (1, lambda seed: SimulatedVLMLabeler(0.75, seed=seed)),
    "smooth": (1, lambda seed: SimulatedVLMLabeler(0.75, seed=seed)),
    "swap": (2, lambda seed: SimulatedVLMLabeler(0.75, seed=seed)),
    "swap-ties": (2, lambda seed: SimulatedVLMLabeler(0.75, seed=seed)),
    "perfect": (1, lambda seed: OracleLabeler(seed=seed)),
}


def probe(method: str, inputs: np.ndarray, frames: np.ndarray, rewards: np.ndarray, episode: np.ndarray,
          reward_input: str, queries: int, seed: int) -> dict:
    """Train one reward model with ``method`` on ``queries`` queries' labels; score it on held-out episodes."""
    rng = np.random.default_rng(seed)
    held_out = episode % 4 == 3
    train_idx, test_idx = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    per_pair, teacher = METHODS[method]
    pairs = np.stack([rng.choice(train_idx, queries // per_pair), rng.choice(train_idx, queries // per_pair)], axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    data = PreferenceDataset(use_soft_labels=True)
    right = kept = 0
    for (i, j), labels in zip(pairs, label_pairs(method, teacher(seed), frames, rewards, pairs)):
        for preference, soft in labels:
            data.add(inputs[i], inputs[j], preference, soft)
            if soft != 0.5 and rewards[i] != rewards[j]:
                kept += 1
                right += int(preference == (SECOND if rewards[j] > rewards[i] else FIRST))
    shape = inputs.shape[1:]
    model = RewardModel(reward_input, shape, seed=seed)
    trainer = BradleyTerryTrainer(model, epochs=10, seed=seed)
    for _ in range(8):
        trainer.train(data)
    predicted, truth = model.predict(inputs[test_idx]), rewards[test_idx]
    a, b = rng.choice(len(truth), 8000), rng.choice(len(truth), 8000)
    gap = np.abs(truth[a] - truth[b])
    close = (gap > 0) & (gap <= np.quantile(gap[gap > 0], 0.25))
    best = truth >= np.quantile(truth, 0.75)
    return dict(method=method, seed=seed, labels=len(data), label_accuracy=right / kept if kept else None,
                pair_accuracy=pair_accuracy(predicted, truth, rng),
                closest_quarter_accuracy=float(((predicted[b] > predicted[a]) == (truth[b] > truth[a]))[close].mean()),
                best_quarter_accuracy=pair_accuracy(predicted[best], truth[best], rng),
                correlation=float(np.corrcoef(predicted, truth)[0, 1]))


def write_table(path: Path) -> str:
    """The median over seeds of every (task, input, queries, method, commit) in ``path``, as Markdown: compare
    methods within one commit (the scripted data and the teacher may differ between commits)."""
    groups: Dict[tuple, List[dict]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        groups.setdefault((r["task"], r["input"], r["queries"], r["method"], r.get("commit")), []).append(r)
    table = ["| task | reward input | queries | method | commit | seeds | labels | label acc. (kept) | held-out pair acc. | "
             "closest quarter | best quarter | corr. with true |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (task, reward_input, queries, method, commit), rows in groups.items():
        med = {k: float(np.median([r[k] for r in rows if r[k] is not None] or [np.nan]))
               for k in ("labels", "label_accuracy", "pair_accuracy", "closest_quarter_accuracy",
                         "best_quarter_accuracy", "correlation")}
        table.append(f"| {task} | {reward_input} | {queries} | {method} | {commit} | {len(rows)} | {med['labels']:.0f} | "
                     f"{med['label_accuracy']:.2f} | {med['pair_accuracy']:.3f} | {med['closest_quarter_accuracy']:.3f} | "
                     f"{med['best_quarter_accuracy']:.3f} | {med['correlation']:.2f} |")
    return "\n".join(table) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", help="cloth-fold, rope or a MetaWorld task with a scripted policy")
    parser.add_argument("--input", default="frame", choices=("frame", "observation"), help="what the reward model reads")
    parser.add_argument("--queries", type=int, default=400, help="queries each method spends")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=None,
                        help="default: 24 (MetaWorld), 600 (cloth-fold), 150 (rope)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    episodes = args.episodes or {"cloth-fold": 600, "rope": 150}.get(args.task, 24)
    frames, rewards, episode, observations = scripted_frames(args.task, episodes)
    small = np.stack([resize_frame(f, 64) for f in frames])
    inputs = small if args.input == "frame" else observations
    print(f"{len(frames)} frames, true reward {rewards.min():.3f} to {rewards.max():.3f}", flush=True)
    path = RESULTS / "noise_probe.jsonl"
    for seed in args.seeds:
        for method in args.methods:
            row = dict(task=args.task, input=args.input, queries=args.queries, commit=STARTED_ON_COMMIT,
                       **probe(method, inputs, small, rewards, episode, args.input, args.queries, seed))
            print(row, flush=True)
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
    table = write_table(path)
    (RESULTS / "noise_probe.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
