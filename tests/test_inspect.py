"""The label browser (vlm-reward inspect), opened in a real headless browser."""

import sqlite3
import urllib.error
import urllib.request

import numpy as np
import pytest
from browser import open_browser, screenshot

from vlm_reward_wrappers.label_store import LabelRecord, LabelStore, frame_hash
from vlm_reward_wrappers.metrics import gt_preference
from vlm_reward_wrappers.web.inspect import PAGE_SIZE, StoreReader, serve_inspect

N_ANSWERS = 10_000


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """10,000 answers of two labelers between 200 frames, with true rewards, a third of them abstentions."""
    path = tmp_path_factory.mktemp("inspect") / "labels.sqlite"
    rng = np.random.default_rng(0)
    frames = [np.full((24, 32, 3), k, dtype=np.uint8) for k in range(200)]
    hashes = [frame_hash(frame) for frame in frames]
    pairs = [(i, j) for i in range(200) for j in range(i + 1, 200)][:N_ANSWERS]
    store = LabelStore(path)
    for k, (i, j) in enumerate(pairs):
        record = LabelRecord(hashes[i], hashes[j], "the pole is upright", f"labeler-{k % 2}", "v1",
                             int(rng.integers(-1, 2)), raw=f"analysis {k}\nanswer", latency_s=0.5,
                             created=1.7e9 + k, gt_reward_a=float(rng.normal()), gt_reward_b=float(rng.normal()))
        store.add(record, frames[i], frames[j])
    records = store.records()
    store.close()
    return path, records


def _get(url):
    try:
        with urllib.request.urlopen(url) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_page_of_10000_answers_opens_in_a_browser_quickly_with_the_stores_counts(big_store):
    path, records = big_store
    truth = [gt_preference(r.gt_reward_a, r.gt_reward_b) for r in records]
    wrong = sum(r.preference != -1 and t != -1 and r.preference != t for r, t in zip(records, truth))
    abstained = sum(r.preference == -1 for r in records)
    server = serve_inspect(path)
    browser = open_browser()
    try:
        browser.get(server.url)
        load_ms = browser.execute_script(
            "const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd - n.startTime;")
        assert 0 < load_ms < 2000, load_ms
        text = lambda id_: browser.find_element("id", id_).text  # noqa: E731
        assert int(text("count-total")) == len(records) == N_ANSWERS
        assert int(text("count-wrong")) == wrong and int(text("count-abstained")) == abstained
        assert int(text("page-count")) == N_ANSWERS // PAGE_SIZE
        assert len(browser.find_elements("css selector", ".pair")) == PAGE_SIZE
        assert len(browser.find_elements("css selector", "#accuracy-plot polyline")) == 1

        browser.get(server.url + "?show=wrong&labeler=labeler-1&page=3")
        in_filter = [r for r, t in zip(records, truth)
                     if r.labeler_id == "labeler-1" and r.preference != -1 and t != -1 and r.preference != t]
        assert int(text("count-shown")) == len(in_filter)
        cards = browser.find_elements("css selector", ".pair")
        assert len(cards) == PAGE_SIZE and all("wrong" in card.get_attribute("class") for card in cards)
        # Page 3 starts at the 101st matching answer, oldest first.
        first = in_filter[2 * PAGE_SIZE]
        assert f"# {records.index(first) + 1};" in cards[0].text
        # Frames load lazily, from the store, as PNGs.
        image = cards[0].find_element("css selector", "img")
        assert image.get_attribute("loading") == "lazy"
        status, png = _get(image.get_attribute("src"))
        assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        browser.quit()
        server.close()


def test_an_audits_answers_open_in_the_browser_with_the_audits_label_accuracy(tmp_path):
    import gymnasium as gym
    from conftest import GOAL

    from vlm_reward_wrappers.audit import audit
    from vlm_reward_wrappers.labelers import SimulatedVLMLabeler

    env = gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array")
    store = LabelStore(tmp_path / "audit.sqlite")
    result = audit(env, GOAL, SimulatedVLMLabeler(0.75, seed=0), n_pairs=40, label_store=store, seed=0)
    env.close()
    store.close()
    server = serve_inspect(tmp_path / "audit.sqlite")
    browser = open_browser()
    try:
        browser.get(server.url)
        row = browser.find_elements("css selector", "#labelers tr")[1].text.split()
        assert float(row[-1]) == pytest.approx(result.label_accuracy, abs=1e-3)
        assert int(browser.find_element("id", "count-total").text) == result.pairs
        screenshot(browser, "inspect.png")
    finally:
        browser.quit()
        server.close()


def test_the_browser_filters_by_time_and_reads_the_labelers_figures(big_store):
    path, records = big_store
    reader = StoreReader(path)
    since, until = 1.7e9 + 100, 1.7e9 + 199
    assert reader.count(since=since, until=until) == 100
    by_labeler = {row["labeler_id"]: row for row in reader.labelers()}
    mine = [r for r in records if r.labeler_id == "labeler-0"]
    judged = [r for r in mine if r.preference != -1 and gt_preference(r.gt_reward_a, r.gt_reward_b) != -1]
    correct = sum(r.preference == gt_preference(r.gt_reward_a, r.gt_reward_b) for r in judged)
    assert by_labeler["labeler-0"]["answers"] == len(mine)
    assert by_labeler["labeler-0"]["label_accuracy"] == pytest.approx(correct / len(judged))
    points = reader.accuracy_over_time()
    assert sum(n for *_, n in points) == sum(
        r.preference != -1 and gt_preference(r.gt_reward_a, r.gt_reward_b) != -1 for r in records)
    reader.close()


def test_a_store_written_before_true_rewards_were_kept_opens_and_gains_the_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE frames (hash TEXT PRIMARY KEY, frame BLOB NOT NULL, reward_input BLOB);
        CREATE TABLE labels (id INTEGER PRIMARY KEY AUTOINCREMENT, hash_a TEXT NOT NULL, hash_b TEXT NOT NULL,
        goal TEXT NOT NULL, labeler_id TEXT NOT NULL, prompt_version TEXT NOT NULL, preference INTEGER NOT NULL,
        soft REAL, raw TEXT NOT NULL, latency_s REAL NOT NULL, created REAL NOT NULL,
        UNIQUE (hash_a, hash_b, goal, labeler_id, prompt_version));
        INSERT INTO labels (hash_a, hash_b, goal, labeler_id, prompt_version, preference, raw, latency_s, created)
        VALUES ('a', 'b', 'g', 'L', 'v', 1, '', 0.1, 1.0);""")
    db.commit()
    db.close()
    reader = StoreReader(path)  # read-only: the old columns are read as unknown truths
    assert reader.count() == 1 and reader.page(0)[0]["truth"] is None
    reader.close()
    store = LabelStore(path)
    assert store.records()[0].gt_reward_a is None
    frame = np.zeros((4, 4, 3), np.uint8)
    store.add(LabelRecord(frame_hash(frame), "c" * 32, "g", "L", "v", 0, gt_reward_a=1.0, gt_reward_b=float("nan")), frame, frame + 1)
    assert store.lookup("c" * 32, frame_hash(frame), "g", "L", "v").gt_reward_b == 1.0  # flipped with the pair
    store.close()


def test_the_browser_refuses_requests_without_its_token_off_loopback_and_serves_no_file(big_store):
    path, _ = big_store
    server = serve_inspect(path, host="0.0.0.0")
    try:
        assert server.token and f"token={server.token}" in server.url
        base = server.url.split("?")[0]
        assert _get(base)[0] == 401
        assert _get(base + "?token=wrong-token")[0] == 401
        status, body = _get(server.url)
        assert status == 200 and b"count-total" in body
        for attempt in ("frames/..%2F..%2F..%2Fetc%2Fpasswd.png", "frames/../../etc/passwd",
                        f"frames/{'0' * 32}.png", "static/../../labels.sqlite"):
            status, body = _get(f"{base}{attempt}?token={server.token}")
            assert status == 404 and b"root:" not in body, attempt
    finally:
        server.close()
