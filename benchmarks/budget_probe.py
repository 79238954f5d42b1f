"""Find a full-grid budget: train on a task's TRUE reward for a number of steps and print its learning
curve next to random actions, appending the run to ``benchmarks/results/full/budget_probes.jsonl``.

    python benchmarks/budget_probe.py drawer-open 60000 --seed 0
    python benchmarks/budget_probe.py cloth-fold 3000 --algo-kwargs '{"ent_coef": "auto_0.01"}'

A budget belongs in the grid (``harness.TASKS[task].steps["full"]``) once the true reward clearly beats
random actions in it: only then can a learned reward be judged there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("MUJOCO_GL", "egl")

from benchmarks import harness  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(harness.TASKS))
    parser.add_argument("steps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--algo-kwargs", type=json.loads, default={},
                        help="JSON of the algorithm's settings to change, on top of the task's")
    args = parser.parse_args()
    base = harness.TASKS[args.task]
    harness.TASKS["probe"] = dataclasses.replace(base, steps={"full": args.steps}, learner={"full": {}},
                                                 eval_every={"full": max(1, args.steps // 6)},
                                                 algo_kwargs={**base.algo_kwargs, **args.algo_kwargs})
    result = harness.run_one("probe", "true", args.seed, "full")
    result.update(task=args.task, algo_kwargs=args.algo_kwargs,
                  random=harness.random_score(base.env_id, base.eval_episodes, base.metric))
    out = HERE / "results" / "full" / "budget_probes.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(f"{args.task}, true reward, {args.steps} steps, seed {args.seed}, {args.algo_kwargs}: curve {result['curve']}, "
          f"random {result['random']:.2f}, {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
