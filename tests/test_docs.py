"""The documentation site (built with mkdocs --strict, then read in a headless browser) and the README's
generated headline table."""

import dataclasses
import functools
import http.server
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from vlm_reward_wrappers import PRESETS, LearnerConfig, VLMRewardWrapper

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "benchmarks" / "results" / "full" / "summary.json"
_spec = importlib.util.spec_from_file_location("bench_headline", ROOT / "benchmarks" / "headline.py")
headline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(headline)


def test_the_readme_headline_is_what_the_committed_summary_says():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name, expected in headline.blocks(SUMMARY).items():
        assert headline.readme_block(readme, name) == expected, (
            f"README.md's {name} table differs from the results it is written from: run python benchmarks/headline.py")
    assert len(readme.splitlines()) <= 250, "README.md is the front door: keep it to 250 lines, the rest goes in docs/"


def test_every_relative_link_of_the_readme_points_at_a_file():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", readme) if "://" not in t and not t.startswith("#")]
    assert targets, "the README links into docs/"
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_update_readme_rewrites_the_block_and_nothing_else(tmp_path):
    row = json.loads(SUMMARY.read_text(encoding="utf-8"))[0]  # the fields a summary row has
    summary = [{**row, "task": "cartpole-angle", "algo": "SAC", "source": source, "n_seeds": 3}
               for source in ("oracle", "realistic-0.75")]
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    readme = tmp_path / "README.md"
    cost_start, cost_end = headline.markers("cost-at-scale")
    readme.write_text(f"# title\n\nbefore\n\n{headline.START}\n| stale | table |\n{headline.END}\n\nbetween\n\n"
                      f"{cost_start}\n{cost_end}\n\nafter\n")

    assert headline.update_readme(readme, tmp_path / "summary.json")
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "\n\nbetween\n\n" in text
    assert headline.readme_block(text) == headline.headline_table(summary)
    assert headline.readme_block(text, "cost-at-scale") == headline.RELABEL_SCALING.read_text().strip("\n")
    assert "| cartpole-angle | SAC | perfect teacher | 3 |" in text and "stale" not in text
    assert not headline.update_readme(readme, tmp_path / "summary.json"), "a current block is left as it is"

    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="headline-results:start"):
        headline.update_readme(readme, tmp_path / "summary.json")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built as `mkdocs build --strict` builds it (warnings fail it), and its address, served locally."""
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason=f'the docs build needs {module}: pip install -e ".[docs]"')
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"), capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr[-4000:]}"
    handler = functools.partial(_QuietHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002  (the base class's name)
        pass


def _rows(browser, selector="article table tr"):
    """Each table row's cells as text (textContent: rows folded away in a details block count too)."""
    return [[cell.get_attribute("textContent").strip() for cell in row.find_elements("css selector", "td")]
            for row in browser.find_elements("css selector", selector)]


def test_the_site_builds_strictly_and_shows_the_generated_pages(site):
    from browser import open_browser

    browser = open_browser()
    try:
        browser.get(site + "/")
        assert "vlm_reward_wrappers" in browser.title
        assert browser.find_element("css selector", "article h1").text == "vlm_reward_wrappers"

        # The options table is written from LearnerConfig when the site is built: one row per field.
        browser.get(site + "/options/")
        settings = {cells[0] for cells in _rows(browser) if cells}
        missing = [f.name for f in dataclasses.fields(LearnerConfig) if f.name not in settings]
        assert not missing, f"the options page has no row for {missing}"
        assert {f'"{name}"' for name in PRESETS} <= settings, "the presets table lists every preset"

        # The API pages come from the docstrings.
        browser.get(site + "/api/wrappers/")
        first_line = VLMRewardWrapper.__doc__.strip().splitlines()[0]
        assert first_line in browser.find_element("css selector", "article").text

        # The benchmarks page includes summary.md as the harness wrote it, and shows the learning curves.
        browser.get(site + "/benchmarks/")
        entry = next(e for e in json.loads(SUMMARY.read_text(encoding="utf-8")) if e["median_normalized"] is not None)
        row = [entry["task"], entry["algo"], entry["source"], str(entry["n_seeds"]), f"{entry['median_normalized']:.2f}"]
        assert row in [cells[:5] for cells in _rows(browser)], f"no summary row {row} on the benchmarks page"
        sizes = browser.execute_script(
            "return [...document.querySelectorAll('article img')].map(i => [i.getAttribute('src'), i.naturalWidth])")
        assert sizes and all(width > 0 for _, width in sizes), f"figures that did not load: {sizes}"
    finally:
        browser.quit()


def test_a_setting_without_a_param_entry_fails_the_docs_build():
    pytest.importorskip("mkdocs", reason='the docs build needs mkdocs: pip install -e ".[docs]"')
    from mkdocs.exceptions import PluginError

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)

    @dataclasses.dataclass
    class Settings:
        """Two settings.

        :param documented: what it does, said over
            two lines, with ``code`` and :class:`~vlm_reward_wrappers.config.LearnerConfig`.
        """

        documented: int = 20_000
        undocumented: str = "x"

    with pytest.raises(PluginError, match=r"Settings fields without a ':param name:' entry.*\['undocumented'\]"):
        hooks.options_table(Settings)
    Settings.__doc__ += "    :param undocumented: now it is.\n"
    table = hooks.options_table(Settings)
    assert "| `documented` | `20_000` | what it does, said over two lines, with `code` and `LearnerConfig`. |" in table
    assert "| `undocumented` | `\"x\"` | now it is. |" in table
    Settings.__doc__ += "    :param gone: a setting that was removed.\n"
    with pytest.raises(PluginError, match="documents \\['gone'\\]"):
        hooks.options_table(Settings)
