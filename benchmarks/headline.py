"""The README's headline results table, written from the full grid's ``summary.json``.

``python benchmarks/headline.py`` rewrites the block between ``<!-- headline-results:start -->`` and
``<!-- headline-results:end -->`` in README.md from ``benchmarks/results/full/summary.json``;
``tests/test_docs.py`` fails when the README's block differs from what :func:`headline_table` makes of the
committed file, so the README carries no figure the grid did not write.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, Sequence, Union

ROOT = Path(__file__).resolve().parent.parent
START = "<!-- headline-results:start -->"
END = "<!-- headline-results:end -->"
#: The reward sources the headline shows, in its order, with the words the docs use for them.
SOURCES: Dict[str, str] = {
    "oracle": "perfect teacher",
    "realistic-0.75": "simulated VLM teacher (75%)",
    "mistake-0.2": "20% mistakes",
}
#: Task families in the order the headline lists them (classic control, MetaWorld, deformables); a task
#: not named here comes after them, alphabetically.
FAMILIES = ("cartpole-angle", "cartpole-angle-ppo", "pendulum", "pendulum-ppo", "drawer-open", "sweep-into", "rope",
            "cloth-fold")


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
        "| task | algo | reward source | seeds | median normalized | median queries | median wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in sorted(rows, key=order):
        score = "n/a" if e["median_normalized"] is None else f"{e['median_normalized']:.2f}"
        lines.append(f"| {e['task']} | {e['algo']} | {SOURCES[e['source']]} | {e['n_seeds']} | {score} | "
                     f"{e['median_queries']:,.0f} | {e['median_wall_s']:,.0f} |")
    return "\n".join(lines)


def readme_block(readme: str) -> str:
    """The text between the README's headline markers; a ValueError if they are missing."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {START} ... {END} block to hold the headline table")
    return readme[start + len(START):end].strip("\n")


def update_readme(readme_path: Union[str, Path], summary_path: Union[str, Path]) -> bool:
    """Rewrite the README's headline block from ``summary_path``; True if the README changed."""
    readme_path = Path(readme_path)
    readme = readme_path.read_text(encoding="utf-8")
    old = readme_block(readme)
    new = headline_table(json.loads(Path(summary_path).read_text(encoding="utf-8")))
    if old == new:
        return False
    start, end = readme.find(START) + len(START), readme.find(END)
    readme_path.write_text(readme[:start] + "\n" + new + "\n" + readme[end:], encoding="utf-8")
    return True


if __name__ == "__main__":
    summary_file = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "benchmarks" / "results" / "full" / "summary.json"
    changed = update_readme(ROOT / "README.md", summary_file)
    print(f"README.md headline {'rewritten' if changed else 'already current'} from {summary_file}")
