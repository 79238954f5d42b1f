"""Benchmark reward sources against the true reward: task x reward source x seed.

    python benchmarks/run.py --size smoke                             # minutes on 2 CPU cores
    python benchmarks/run.py --size full --tasks drawer-open --seeds 0 1 2
    python benchmarks/run.py --sources true vlm --labeler llama --model-path vlm.gguf --mmproj-path mmproj.gguf
    python benchmarks/run.py --size full --tasks pendulum+shift4 --sources oracle --seeds 0 1 2   # an ablation
    python benchmarks/run.py --size full --seeds 0 1 2 --ray auto    # the cells as Ray tasks on a cluster

Reward sources: true, oracle, mistake-<rate>, realistic-<accuracy> (simulated teachers), 'vlm' (the
--labeler given: llama or openai) and 'clip' (--clip-checkpoint). Results go to
``benchmarks/results/<size>`` unless ``--out`` says otherwise: results.jsonl (appended run by run: rerun
the same command to finish an interrupted grid), results.md, summary.json (median and IQR over seeds)
and one learning-curve PNG per task with seed bands (the ``plot`` extra). A task ``<task>+<ablation>``
(``harness.ABLATIONS``) runs the task with one change, is normalised by the task's own true-reward runs,
and lands in ablation.md beside the task as it is.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run by path, Python puts benchmarks/ on sys.path, not the repository
    sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

from benchmarks import harness  # noqa: E402
from vlm_reward_wrappers.cli import labeler_options, make_labeler  # noqa: E402


def _task(name: str) -> str:
    try:
        harness.task_config(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, parents=[labeler_options()],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="smoke", choices=harness.SIZES,
                        help="smoke: minutes on 2 CPU cores; full: RL-VLM-F's budgets")
    parser.add_argument("--tasks", nargs="+", default=None, type=_task, metavar="TASK",
                        help=f"{', '.join(sorted(harness.TASKS))}, each optionally +<ablation> "
                             f"({', '.join(harness.ABLATIONS)}); default: {' '.join(harness.SMOKE_TASKS)} (smoke), "
                             f"{' '.join(harness.FULL_TASKS)} (full)")
    parser.add_argument("--sources", nargs="+", default=None,
                        help="true, oracle, mistake-<rate>, realistic-<accuracy>, and 'vlm' (the --labeler given) or "
                             f"'clip' (default: {' '.join(harness.SIMULATED_SOURCES)} (smoke), "
                             f"{' '.join(harness.FULL_SOURCES)} (full))")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rewrite results.md, summary.json and the curves from results.jsonl")
    parser.add_argument("--out", default=None, help="results folder (default: benchmarks/results/<size>)")
    parser.add_argument("--ray", default=None, metavar="ADDRESS",
                        help="run the cells as Ray tasks: 'local' (a Ray instance on this machine), 'auto' (the "
                             "cluster this machine is part of) or a cluster's address; default: one after another here")
    parser.add_argument("--cpus-per-cell", type=float, default=1.0, help="--ray: CPUs reserved for each cell")
    return parser


def default_out(size: str) -> Path:
    """Where a size's results go by default: beside this script, whatever the working directory."""
    return HERE / "results" / size


def main(argv: Optional[List[str]] = None) -> List[dict]:
    """Run the benchmark grid, write its table and curves, print the table; return the results."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tasks = args.tasks or list(harness.SMOKE_TASKS if args.size == "smoke" else harness.FULL_TASKS)
    labelers = {}
    if args.labeler in ("llama", "openai"):
        labelers["vlm"] = lambda: make_labeler(args)
    sources = args.sources or list(harness.SIMULATED_SOURCES if args.size == "smoke" else harness.FULL_SOURCES)
    if "clip" in sources:
        labelers["clip"] = lambda: make_labeler(argparse.Namespace(**{**vars(args), "labeler": "clip"}))
    out = Path(args.out) if args.out else default_out(args.size)
    try:
        results = harness.run_benchmark(args.size, tasks, sources, args.seeds, out, labelers, args.report_only,
                                        args.ray, args.cpus_per_cell)
    except harness.CellsFailed as failed:
        print((out / "results.md").read_text())
        sys.exit(f"error: {failed}")
    print((out / "results.md").read_text())
    return results


if __name__ == "__main__":
    main()
