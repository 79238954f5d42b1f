"""The benchmark harness and scripts: not part of the installed package.

Scripts run by path (``python benchmarks/run.py``) put the repository root on ``sys.path`` themselves, so
``from benchmarks import harness`` works from any working directory."""
