"""What relabelling the replay buffer costs as it grows: memory and seconds, from 10,000 to 1,000,000 transitions.

RelabelingReplayBuffer keeps every transition's reward-model input and rescores the whole buffer after each
reward-model update. This measures the reward model's scoring rate on this machine (64 px frames, RL-VLM-F's
CNN ensemble of 3, 1 and all torch threads) and projects, for each buffer size: the inputs' memory, one
pass's seconds, and a 1,000,000-step MetaWorld run with RL-VLM-F's schedule (an update every 4,000 steps
after the first 10,000; each pass rescores what the buffer holds then). On a GPU (``--device cuda``) the
rate includes copying the uint8 frames from host memory, as ``RelabelingReplayBuffer`` does. Results:
benchmarks/results/relabel_scaling.{json,md} (``relabel_scaling_cuda.*`` for ``--device cuda``).

    python benchmarks/relabel_scaling.py [--frames 4096] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from vlm_reward_wrappers.config import PRESETS
from vlm_reward_wrappers.reward_model import RewardModel

RESULTS = Path(__file__).parent / "results"
BUFFER_SIZES = (10_000, 100_000, 1_000_000)
RUN_STEPS = 1_000_000


def scoring_rate(frames: int, threads: int, batch_size: int, device: str = "cpu") -> float:
    """64 px frames scored per second by a fresh 3-member CNN ensemble on ``device``."""
    torch.set_num_threads(threads)
    model = RewardModel("frame", (64, 64, 3), seed=0, device=device)
    inputs = np.random.default_rng(0).integers(0, 256, (frames, 64, 64, 3), dtype=np.uint8)
    model.predict(inputs[:batch_size], batch_size)  # warm-up (and, on a GPU, its kernels chosen)
    started = time.perf_counter()
    model.predict(inputs, batch_size)  # returns numpy: a GPU's work has finished when it returns
    return frames / (time.perf_counter() - started)


def scoring_rates(frames: int, device: str) -> Dict[str, float]:
    """The rate for each setting worth trying on ``device``: 1 and all torch threads on a CPU, larger
    batches on a GPU."""
    if device == "cpu":
        return {f"{threads} thread(s), batch {batch}": scoring_rate(frames, threads, batch)
                for threads in sorted({1, os.cpu_count() or 1}) for batch in (64, 256)}
    return {f"{device}, batch {batch}": scoring_rate(frames, 1, batch, device) for batch in (256, 1024, 4096)}


def run_seconds(buffer_size: int, rate: float) -> float:
    """Seconds of relabelling over a RUN_STEPS-step run with the metaworld preset's schedule."""
    config = PRESETS["metaworld"]
    first = config.seed_steps + config.exploration_steps
    updates = np.arange(max(first, config.query_every), RUN_STEPS + 1, config.query_every)
    return float(np.minimum(updates, buffer_size).sum() / rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4096, help="frames scored per rate measurement")
    parser.add_argument("--device", default="cpu", help="torch device that scores: cpu (default) or cuda")
    args = parser.parse_args()
    if args.device != "cpu" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no GPU here (torch {torch.__version__}); run it on a GPU "
                     "machine with a CUDA build of torch, or leave --device out")
    cores = os.cpu_count() or 1
    rates = scoring_rates(args.frames, args.device)
    best_label = max(rates, key=rates.get)
    best = rates[best_label]
    frame_bytes = 64 * 64 * 3
    rows = [{"buffer_size": n, "inputs_gb": n * frame_bytes / 2**30, "pass_s": n / best,
             "run_relabel_h": run_seconds(n, best) / 3600} for n in BUFFER_SIZES]
    machine = f"{platform.processor() or platform.machine()}, {cores} cores (load {os.getloadavg()[0]:.1f} at start)"
    if args.device != "cpu":
        machine += f", {torch.cuda.get_device_name(args.device)}"
    name = "relabel_scaling" if args.device == "cpu" else f"relabel_scaling_{args.device.split(':')[0]}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(
        {"machine": machine, "device": args.device, "rates_frames_per_s": rates, "rows": rows}, indent=1))
    where = "the CPU" if args.device == "cpu" else f"the GPU ({args.device})"
    lines = [f"Relabelling cost on {where} ({machine}). Scoring rate of 64 px frames, 3-member CNN ensemble: "
             + ", ".join(f"{label}: {rate:.0f}/s" for label, rate in rates.items()) + f"; projected with the best, "
             f"{best_label}.", "",
             "| buffer (transitions) | inputs in memory (GB) | one pass (s) | per env step, an update every "
             f"{PRESETS['metaworld'].query_every:,} (ms) | relabelling over a 1M-step MetaWorld run (h) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['buffer_size']:,} | {r['inputs_gb']:.2f} | {r['pass_s']:.0f} | "
              f"{1000 * r['pass_s'] / PRESETS['metaworld'].query_every:.1f} | {r['run_relabel_h']:.1f} |" for r in rows]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
