"""Where the grid's cells run: one after another in this process, or as Ray tasks on this machine or a
cluster (``benchmarks/run.py --ray local|auto|<address>``).

Either way the driver gets each cell's result as the cell finishes and writes it; a cell that fails is
reported with its error and the others go on.
"""

from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path
from typing import Callable, Dict, Iterator, NamedTuple, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

#: What a Ray cluster's nodes need on their path: this repository's root (for ``benchmarks``).
ROOT = Path(__file__).resolve().parent.parent
RAY_EXTRA = "the grid on Ray needs Ray: pip install 'vlm-reward-wrappers[ray]'"

Cell = Tuple[str, str, int]  # task, reward source, seed


class Finished(NamedTuple):
    """One cell's end: its result, or the error that ended it (a traceback's text)."""

    cell: Cell
    result: Optional[dict]
    error: Optional[str]


def run_cell(config, task: str, source: str, seed: int, size: str,
             labeler_factory: Optional[Callable[[], object]]) -> dict:
    """One cell, with its labeler built where it runs (a labeler holds models and connections)."""
    from benchmarks import harness

    return harness.run_one(task, source, seed, size, labeler_factory() if labeler_factory else None, config=config)


def run_cells(cells: Sequence[Cell], configs: Dict[str, object], size: str,
              labelers: Dict[str, Callable[[], object]], ray_address: Optional[str] = None,
              cpus_per_cell: float = 1.0) -> Iterator[Finished]:
    """Run ``cells`` and yield each as it finishes.

    :param configs: each task's :class:`~benchmarks.harness.TaskConfig`, resolved by the driver, so the
        workers run what the driver was asked for.
    :param labelers: factories of real labelers by source name, called in the cell's process.
    :param ray_address: None: here, one cell after another. "local": a Ray instance started on this machine
        for the grid; "auto" or an address: the running cluster's (``ray.init``'s ``address``).
    :param cpus_per_cell: CPUs Ray reserves for each cell.
    """
    if ray_address is None:
        for cell in cells:
            task, source, seed = cell
            try:
                yield Finished(cell, run_cell(configs[task], task, source, seed, size, labelers.get(source)), None)
            except Exception:
                logger.exception("cell %s failed", cell)
                yield Finished(cell, None, traceback.format_exc())
        return
    yield from _on_ray(cells, configs, size, labelers, ray_address, cpus_per_cell)


def _on_ray(cells: Sequence[Cell], configs: Dict[str, object], size: str, labelers: Dict[str, Callable[[], object]],
            address: str, cpus_per_cell: float) -> Iterator[Finished]:
    try:
        import ray
    except ImportError as error:
        raise ImportError(RAY_EXTRA) from error
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    # No retries: a cell that died would start over from step 0 and its run would count twice in wall time.
    remote = ray.remote(num_cpus=cpus_per_cell, max_retries=0)(run_cell)
    pending = {remote.remote(configs[task], task, source, seed, size, labelers.get(source)): (task, source, seed)
               for task, source, seed in cells}
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ref)
            try:
                yield Finished(cell, ray.get(ref), None)
            except ray.exceptions.RayError as error:
                logger.error("cell %s failed: %s", cell, error)
                yield Finished(cell, None, str(error))
    finally:
        for ref in pending:  # the driver stopped (Ctrl-C, or a caller that stopped reading): so do the cells
            ray.cancel(ref, force=True)
        ray.shutdown()
