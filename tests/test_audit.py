"""The audit: figures that match the labeler, and an HTML report that a real headless browser renders."""

import json
import re
import shutil
import subprocess

import gymnasium as gym
import pytest

from conftest import GOAL
from fakes import FakeLabeler
from vlm_reward_wrappers.audit import audit, write_report
from vlm_reward_wrappers.cli import main
from vlm_reward_wrappers.labelers import OracleLabeler, SimulatedVLMLabeler


def _dom(page):
    """The page's DOM after Chromium has loaded and laid it out."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs Debian's chromium (bash .ci/setup dev installs it)")
    out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.slow
def test_the_audit_measures_the_realistic_teacher_and_its_errors_sit_on_close_pairs(tmp_path):
    env = gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array")
    result = audit(env, GOAL, SimulatedVLMLabeler(target_accuracy=0.75, position_bias=0.9, abstain_rate=0.2, seed=0),
                   n_pairs=400, feedback_budget=5000, cost_per_query=0.002, seed=0)
    env.close()
    assert result.pairs == 400 and result.dropped == 0
    assert abs(result.label_accuracy - 0.75) < 0.06  # calibrated online, on 400 pairs
    bins = result.gap_bins
    assert len(bins) == 4 and bins[0]["label_accuracy"] < 0.7 < 0.9 < bins[-1]["label_accuracy"]
    assert 0.02 < result.abstention_rate < 0.3 and result.first_image_rate > 0.5  # biased guesses
    assert result.budget_cost == pytest.approx(10.0) and result.budget_hours > 0
    # The frames shown are the rendered ones (600x400 fits the default), not the reward model's thumbnails.
    assert result.items[0]["frame_a"].startswith("data:image/png;base64,")


def test_the_report_renders_in_a_headless_browser_with_the_json_figures(tmp_path):
    env = gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array")
    result = audit(env, GOAL, OracleLabeler(), n_pairs=12, swap=True, seed=1)
    env.close()
    page = write_report(result, tmp_path / "audit")
    data = json.loads((tmp_path / "audit" / "audit.json").read_text())
    dom = _dom(page)
    assert len(re.findall(r"<img src=\"data:image/png;base64,", dom)) == 2 * data["pairs"] == 24
    for name in ("pairs", "answered", "label_accuracy", "swap_inconsistency_rate", "dropped"):
        shown = re.search(rf'<td id="{name}">([^<]*)</td>', dom).group(1)
        value = data[name]
        assert shown == (f"{value:d}" if isinstance(value, int) else f"{value:.3f}"), name
    assert data["label_accuracy"] == 1.0 and data["swap_inconsistency_rate"] == 0.0  # the oracle, both ways
    assert "[swapped order]" in dom


def test_cli_audit_writes_the_report(tmp_path, capsys):
    main(["audit", "--labeler", "simulated-vlm", "--pairs", "20", "--out", str(tmp_path / "a")])
    out = capsys.readouterr().out
    assert "label_accuracy:" in out and (tmp_path / "a" / "audit.html").is_file()
    assert json.loads((tmp_path / "a" / "audit.json").read_text())["pairs"] == 20


def test_the_report_shows_each_frame_at_the_size_the_labeler_was_sent_it(tmp_path):
    from browser import open_browser, screenshot

    env = gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array")
    result = audit(env, GOAL, FakeLabeler(query_image_size=360), n_pairs=4, seed=0)
    env.close()
    assert result.items[0]["frame_size"] == [360, 240]  # 600 x 400 rendered, shrunk to the labeler's 360
    page = write_report(result, tmp_path / "audit")
    browser = open_browser()
    try:
        browser.get(page.as_uri())
        sizes = browser.execute_script(
            "return [...document.querySelectorAll('.pair img')].map(i => [i.naturalWidth, i.clientWidth, i.clientHeight])")
        assert len(sizes) == 8 and all(s == [360, 360, 240] for s in sizes), sizes
        assert "sent at 360 x 240 px" in browser.find_element("css selector", ".pair").text
        image = browser.find_element("css selector", ".pair img")
        image.click()
        assert "full" in image.get_attribute("class")
        screenshot(browser, "audit_report.png")
    finally:
        browser.quit()
