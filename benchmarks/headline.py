"""The README's generated tables: the headline results from the full grid's ``summary.json`` and the
relabelling cost at scale from ``benchmarks/results/relabel_scaling.md``.

``python benchmarks/headline.py`` rewrites the blocks between ``<!-- <name>:start -->`` and
``<!-- <name>:end -->`` in README.md (``headline-results`` and ``cost-at-scale``); ``tests/test_docs.py``
fails when a block differs from what the committed files give, so the README carries no figure a
benchmark did not write.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, Sequence, Tuple, Union

ROOT = Path(__file__).resolve().parent.parent
#: The relabelling and memory table ``benchmarks/relabel_scaling.py`` writes.
RELABEL_SCALING = ROOT / "benchmarks" / "results" / "relabel_scaling.md"


def markers(name: str) -> Tuple[str, str]:
    """The comments that open and close the README's block ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


START, END = markers("headline-results")
#: The reward sources the headline shows, in its order, with the words the docs use for them.
SOURCES: Dict[str, str] = {
    "oracle": "perfect teacher",
    "realistic-0.75": "simulated VLM teacher (75%)",
    "mistake-0.2": "20% mistakes",
}
#: Task families in the order the headline lists them (classic control, MetaWorld, deformables); a task
#: not named here comes after them, alphabetically.
FAMILIES = ("cartpole-angle", "cartpole-angle-ppo", "pendulum", "pendulum-ppo", "drawer-open", "drawer-close",
            "sweep-into", "rope", "cloth-fold")


def headline_table(summary: Sequence[dict]) -> str:
    """A Markdown table, one row per task family and headline reward source: median normalized score,
    seeds, median queries and median wall seconds.

    :param summary: the entries of ``summary.json`` (``write_report`` in benchmarks/harness.py): dicts with
        ``task``, ``algo``, ``source``, ``n_seeds``, ``median_normalized`` (None where the true-reward run did
        not beat random actions), ``median_queries`` and ``median_wall_s``. Ablations (``task+change``) and
        the other sources are left out.
    """
    rows = [e for e in summary if "+" not in e["task"] and e["source"] in SOURCES]

    def order(entry: dict) -> tuple:
        task = entry["task"]
        family = FAMILIES.index(task) if task in FAMILIES else len(FAMILIES)
        return family, task, entry["algo"], list(SOURCES).index(entry["source"])

    lines = [
        "Median over seeds of the final score on the true reward, normalized: 0 is random actions, 1 the "
        "true-reward agent of the same seed. Teachers: perfect (every label right), the simulated VLM teacher "
        "at 75% label accuracy, and one that flips 20% of answers (`benchmarks/results/full/summary.json`).",
        "",
        "| task | algo | reward source | seeds | median normalized | median queries | median wall s | "
        "wall / true reward rendered |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in sorted(rows, key=order):
        score = "n/a" if e["median_normalized"] is None else f"{e['median_normalized']:.2f}"
        ratio = e.get("wall_over_true_rendered")
        lines.append(f"| {e['task']} | {e['algo']} | {SOURCES[e['source']]} | {e['n_seeds']} | {score} | "
                     f"{e['median_queries']:,.0f} | {e['median_wall_s']:,.0f} | "
                     f"{'n/a' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines)


def readme_block(readme: str, name: str = "headline-results") -> str:
    """The text of the README's block ``name``; a ValueError if its markers are missing."""
    start_marker, end_marker = markers(name)
    start, end = readme.find(start_marker), readme.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {start_marker} ... {end_marker} block to hold its table")
    return readme[start + len(start_marker):end].strip("\n")


def blocks(summary_path: Union[str, Path], relabel_path: Union[str, Path] = RELABEL_SCALING) -> Dict[str, str]:
    """Each generated block's text, by name, from the committed results."""
    return {"headline-results": headline_table(json.loads(Path(summary_path).read_text(encoding="utf-8"))),
            "cost-at-scale": Path(relabel_path).read_text(encoding="utf-8").strip("\n")}


def update_readme(readme_path: Union[str, Path], summary_path: Union[str, Path],
                  relabel_path: Union[str, Path] = RELABEL_SCALING) -> bool:
    """Rewrite the README's generated blocks from the results files; True if the README changed."""
    readme_path = Path(readme_path)
    readme = old = readme_path.read_text(encoding="utf-8")
    for name, new in blocks(summary_path, relabel_path).items():
        if readme_block(readme, name) != new:
            start_marker, end_marker = markers(name)
            start, end = readme.find(start_marker) + len(start_marker), readme.find(end_marker)
            readme = readme[:start] + "\n" + new + "\n" + readme[end:]
    if readme == old:
        return False
    readme_path.write_text(readme, encoding="utf-8")
    return True


if __name__ == "__main__":
    summary_file = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "benchmarks" / "results" / "full" / "summary.json"
    changed = update_readme(ROOT / "README.md", summary_file)
    print(f"README.md tables {'rewritten' if changed else 'already current'} from {summary_file} and {RELABEL_SCALING}")
