"""An audit before a budget is spent: can this labeler do this task?

:func:`audit` renders frames of an env (random actions), sends the labeler pairs of them through the
labelling service, exactly as training would (query frames at the labeler's size, answers in the label
store), and measures what a run would get: label accuracy against the true reward, overall and by
true-reward gap, how often it abstains, its position bias (and swap inconsistency, when asked both
ways round), its latency and throughput, and what the chosen feedback budget would cost in time and
money. :func:`write_report` writes the figures as JSON and a self-contained HTML page showing every
pair as the labeler saw it, its answer and analysis, and the true answer.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import gymnasium as gym
import numpy as np

from vlm_reward_wrappers.frames import resize_longer_side
from vlm_reward_wrappers.labelers.backends.base import frame_to_data_uri
from vlm_reward_wrappers.labelers.base import Labeler, Query, check_goal, check_labeler
from vlm_reward_wrappers.labelers.swap import SwapConsistentLabeler
from vlm_reward_wrappers.labelling_service import LabellingService, PreferenceJob, RetryPolicy
from vlm_reward_wrappers.label_store import FIRST, NO_PREFERENCE, LabelStore
from vlm_reward_wrappers.metrics import gt_preference
from vlm_reward_wrappers.web.pages import page, pair_card


@dataclass
class AuditResult:
    """The figures of an audit (all rates are fractions) and its pairs.

    ``gap_bins`` rows: the true-reward gap range (in standard deviations of the rewards of the frames
    shown), the pairs in it, and the label accuracy over those answered.
    """

    labeler_id: str
    goal: str
    pairs: int
    answered: int
    label_accuracy: float
    abstention_rate: float
    first_image_rate: float
    swap_inconsistency_rate: Optional[float]
    position_bias: Optional[float]
    latency_s_mean: float
    latency_s_p90: float
    throughput_per_s: float
    feedback_budget: int
    budget_hours: float
    budget_cost: float
    dropped: int
    gap_bins: List[Dict[str, float]] = field(default_factory=list)
    items: List[Dict] = field(default_factory=list)


def collect_frames(env: gym.Env, n_frames: int, every: int = 5, seed: int = 0):
    """Rendered frames and their true rewards from random actions: every ``every``-th step, ``n_frames``."""
    if env.render_mode != "rgb_array":
        raise ValueError("the audit needs an env made with render_mode='rgb_array'")
    env.action_space.seed(seed)
    env.reset(seed=seed)
    frames, rewards, step = [], [], 0
    while len(frames) < n_frames:
        _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        if step % every == 0:
            frames.append(np.array(env.render()))
            rewards.append(float(reward))
        step += 1
        if terminated or truncated:
            env.reset()
    return frames, np.asarray(rewards)


def audit(
    env: gym.Env,
    goal: str,
    labeler: Labeler,
    n_pairs: int = 50,
    feedback_budget: int = 10_000,
    cost_per_query: float = 0.0,
    swap: bool = False,
    label_store: Optional[LabelStore] = None,
    retry: Optional[RetryPolicy] = None,
    seed: int = 0,
) -> AuditResult:
    """Ask ``labeler`` about ``n_pairs`` pairs of ``env``'s frames and measure how it answers.

    :param env: made with ``render_mode="rgb_array"``; its reward is the truth the answers are checked on.
    :param goal: the task in words.
    :param labeler: the labeler to audit.
    :param n_pairs: pairs to ask.
    :param feedback_budget: the queries a training run would send, for the time and cost estimates.
    :param cost_per_query: money per query (e.g. a hosted API's price), for the cost estimate.
    :param swap: ask every pair both ways round (:class:`SwapConsistentLabeler`): measures
        inconsistency and position bias, at twice the queries.
    :param label_store: where answers are committed (resume an interrupted audit); in memory by default.
    :param retry: the labelling service's retry policy.
    :param seed: seed of the actions and the pairs.
    """
    check_goal(goal)
    labeler = SwapConsistentLabeler(labeler) if swap else check_labeler(labeler)
    frames, rewards = collect_frames(env, max(2 * n_pairs, 20), seed=seed)
    shown = [resize_longer_side(frame, labeler.query_image_size) for frame in frames]
    rng = np.random.default_rng(seed)
    pairs = []
    while len(pairs) < n_pairs:
        i, j = rng.choice(len(frames), size=2, replace=False)
        if not np.array_equal(shown[i], shown[j]):
            pairs.append((i, j))
    store = LabelStore() if label_store is None else label_store
    service = LabellingService(labeler, goal, store, retry, asynchronous=False)
    jobs = [PreferenceJob(Query(shown[i], shown[j], rewards[i], rewards[j])) for i, j in pairs]
    started = time.perf_counter()
    service.submit(jobs)
    wall_s = time.perf_counter() - started
    answered = {id(job): record for job, record in service.poll()}
    spread = float(np.std(rewards)) or 1.0
    items = []
    for (i, j), job in zip(pairs, jobs):
        record = answered.get(id(job))
        items.append({
            "frame_a": frame_to_data_uri(shown[i]), "frame_b": frame_to_data_uri(shown[j]),
            "frame_size": [int(shown[i].shape[1]), int(shown[i].shape[0])],  # width, height as sent
            "gt_reward_a": float(rewards[i]), "gt_reward_b": float(rewards[j]),
            "relative_gap": abs(float(rewards[j] - rewards[i])) / spread,
            "true_answer": gt_preference(rewards[i], rewards[j]),
            "answer": None if record is None else record.preference, "raw": "" if record is None else record.raw,
            "latency_s": None if record is None else record.latency_s,
        })
    return _figures(labeler, goal, items, wall_s, service, feedback_budget, cost_per_query)


def _figures(labeler, goal, items, wall_s, service, feedback_budget, cost_per_query) -> AuditResult:
    got = [it for it in items if it["answer"] is not None]
    answered = [it for it in got if it["answer"] != NO_PREFERENCE]
    judged = [it for it in answered if it["true_answer"] != NO_PREFERENCE]

    def accuracy(rows) -> float:
        return float(np.mean([r["answer"] == r["true_answer"] for r in rows])) if rows else float("nan")

    bins = []
    if judged:
        edges = np.quantile([r["relative_gap"] for r in judged], [0, 0.25, 0.5, 0.75, 1.0])
        for k, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
            rows = [r for r in judged if low <= r["relative_gap"] <= high and (k == 3 or r["relative_gap"] < high)]
            bins.append({"gap_low": float(low), "gap_high": float(high), "pairs": len(rows), "label_accuracy": accuracy(rows)})
    latencies = np.array([it["latency_s"] for it in got], dtype=float)
    per_query = float(latencies.mean()) if len(latencies) else float("nan")
    throughput = len(got) / wall_s if wall_s > 0 else float("nan")
    swap = labeler.metrics if isinstance(labeler, SwapConsistentLabeler) else None
    queries_per_pair = 2 if swap is not None else 1
    return AuditResult(
        labeler_id=labeler.labeler_id, goal=goal, pairs=len(items), answered=len(answered),
        label_accuracy=accuracy(judged),
        abstention_rate=1 - len(answered) / len(got) if got else float("nan"),
        first_image_rate=float(np.mean([r["answer"] == FIRST for r in answered])) if answered else float("nan"),
        swap_inconsistency_rate=None if swap is None else swap["swap_inconsistency_rate"],
        position_bias=None if swap is None else swap["position_bias"],
        latency_s_mean=per_query, latency_s_p90=float(np.percentile(latencies, 90)) if len(latencies) else float("nan"),
        throughput_per_s=throughput,
        feedback_budget=feedback_budget,
        budget_hours=feedback_budget * queries_per_pair / throughput / 3600 if throughput > 0 else float("nan"),
        budget_cost=feedback_budget * queries_per_pair * cost_per_query,
        dropped=service.counts["dropped"], gap_bins=bins, items=items,
    )


def write_report(result: AuditResult, folder: Union[str, Path]) -> Path:
    """Write ``audit.json`` (every figure and pair) and ``audit.html`` (self-contained) to ``folder``;
    return the HTML page's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = asdict(result)
    (folder / "audit.json").write_text(json.dumps(data, indent=1))
    page = folder / "audit.html"
    page.write_text(_html(data))
    return page


def _fmt(value, spec=".3f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)


def _html(data: dict) -> str:
    figures = [("pairs", data["pairs"], "d"), ("answered", data["answered"], "d"),
               ("label_accuracy", data["label_accuracy"], ".3f"), ("abstention_rate", data["abstention_rate"], ".3f"),
               ("first_image_rate", data["first_image_rate"], ".3f"),
               ("swap_inconsistency_rate", data["swap_inconsistency_rate"], ".3f"),
               ("position_bias", data["position_bias"], ".3f"), ("latency_s_mean", data["latency_s_mean"], ".3f"),
               ("throughput_per_s", data["throughput_per_s"], ".3f"), ("feedback_budget", data["feedback_budget"], "d"),
               ("budget_hours", data["budget_hours"], ".2f"), ("budget_cost", data["budget_cost"], ".2f"),
               ("dropped", data["dropped"], "d")]
    rows = "".join(f'<tr><th>{n}</th><td id="{n}">{_fmt(v, spec)}</td></tr>' for n, v, spec in figures)
    bins = "".join(
        f"<tr><td>{b['gap_low']:.2f} - {b['gap_high']:.2f}</td><td>{b['pairs']}</td>"
        f"<td class='bin-accuracy'>{_fmt(b['label_accuracy'])}</td></tr>" for b in data["gap_bins"])
    pairs = "".join(
        pair_card(it["frame_a"], it["frame_b"], it["answer"], None if it["true_answer"] == NO_PREFERENCE else it["true_answer"],
                  [("rewards", f"{it['gt_reward_a']:.3f} / {it['gt_reward_b']:.3f}"), ("gap", f"{it['relative_gap']:.2f} sd"),
                   ("sent at", "{} x {} px".format(*it["frame_size"]))],
                  it["raw"])
        for it in data["items"])
    return page("Labeler audit", f"""<h1>Labeler audit</h1><p>{html.escape(data['labeler_id'])}<br>goal: {html.escape(data['goal'])}</p>
<table id="figures">{rows}</table><h2>Label accuracy by true-reward gap (standard deviations)</h2>
<table id="bins"><tr><th>gap</th><th>pairs</th><th>label accuracy</th></tr>{bins}</table>
<h2>Pairs, as the labeler saw them</h2>{pairs}""")
