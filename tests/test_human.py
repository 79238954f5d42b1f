"""People as the labeler: the labelling page driven in a real headless browser."""

import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from browser import open_browser, screenshot
from conftest import GOAL
from selenium.webdriver.common.keys import Keys
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv

from vlm_reward_wrappers import FrameInfoWrapper, VLMRewardVecEnvWrapper
from vlm_reward_wrappers.labelers.base import LabelerUnavailableError, Query
from vlm_reward_wrappers.labelers.human import HumanLabeler
from vlm_reward_wrappers.labelers.pair_queue import PairQueue
from vlm_reward_wrappers.labelling_service import LabellingService, PreferenceJob, RetryPolicy
from vlm_reward_wrappers.label_store import LabelStore
from vlm_reward_wrappers.offline import PreferenceRelabeler

from offline_data import cartpole_dataset  # noqa: E402


def _queries(n):
    frames = [np.full((30, 40, 3), 20 * k, dtype=np.uint8) for k in range(2 * n)]
    return [Query(frames[2 * k], frames[2 * k + 1], float(k), float(k + 1)) for k in range(n)]


def _request(url, data=None, headers=None, with_headers=False):
    """(status, body[, headers]) of a GET, or of a JSON POST when ``data`` is given."""
    request = urllib.request.Request(url, None if data is None else json.dumps(data).encode(),
                                     {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request) as response:
            out = response.status, response.read(), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        out = error.code, error.read(), {}
    return out if with_headers else out[:2]


def _shown_pair(browser, other_than=None, timeout=20.0):
    """The id of the pair the page shows once its frames are loaded (and it differs from ``other_than``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pair = browser.execute_script("return document.body.dataset.pair || null")
        if pair and pair != other_than:
            return pair
        time.sleep(0.05)
    return None


def test_two_people_get_different_pairs_and_a_closed_page_gives_its_pair_back():
    # A long lease: the pair can only come back through the closing page.
    labeler = HumanLabeler(port=0, lease_s=60)
    store = LabelStore()
    service = LabellingService(labeler, GOAL, store)
    service.submit([PreferenceJob(query) for query in _queries(3)])
    first, second = open_browser(), open_browser()
    try:
        first.get(labeler.url)
        held_by_first = _shown_pair(first)
        second.get(labeler.url)
        held_by_second = _shown_pair(second)
        assert held_by_first and held_by_second and held_by_first != held_by_second
        assert first.find_element("id", "goal").text == GOAL
        first.get("about:blank")  # the page is closed mid-pair: it gives the pair back
        deadline = time.monotonic() + 10
        while labeler.queue.held(held_by_first) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not labeler.queue.held(held_by_first)
        second.find_element("id", "right").click()
        assert _shown_pair(second, other_than=held_by_second) == held_by_first
        second.find_element("tag name", "body").send_keys(Keys.ARROW_LEFT)
        third = _shown_pair(second, other_than=held_by_first)
        assert third and third not in (held_by_first, held_by_second)
        second.find_element("tag name", "body").send_keys(" ")
        assert service.wait(timeout=20)
    finally:
        first.quit()
        second.quit()
        service.close()
    answers = sorted(record.preference for _, record in service.poll())
    assert answers == [-1, 0, 1]  # can't tell, left, right: each click reached the labeler
    assert sorted(r.preference for r in store.records()) == [-1, 0, 1]  # and the store
    assert all("answered by" in r.raw for r in store.records())


@pytest.mark.slow
def test_a_person_labels_in_the_browser_while_ppo_trains_on_subprocesses(tmp_path):
    labeler = HumanLabeler(port=0)
    store = LabelStore(tmp_path / "labels.sqlite")
    venv = make_vec_env("vlmrw/CartPoleAngle-v0", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv,
                        wrapper_class=FrameInfoWrapper, env_kwargs={"render_mode": "rgb_array"})
    env = VLMRewardVecEnvWrapper(venv, goal=GOAL, labeler=labeler, label_store=store, seed=0, seed_steps=64,
                                 query_every=128, pairs_per_query=4, feedback_budget=12, max_pending=12)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0)
    clicks, stop = [], threading.Event()

    def person():
        browser = open_browser()
        try:
            browser.get(labeler.url)
            shown = None
            while len(clicks) < 12 and not stop.is_set():
                shown = _shown_pair(browser, other_than=shown, timeout=1.0) or shown
                if shown is None or (clicks and clicks[-1][0] == shown):
                    continue
                if not clicks:
                    screenshot(browser, "labelling.png")
                choice = "left" if len(clicks) % 2 == 0 else "right"
                if choice == "left":
                    browser.find_element("id", "left").click()
                else:
                    browser.find_element("tag name", "body").send_keys("2")
                clicks.append((shown, choice, model.num_timesteps))
        finally:
            browser.quit()

    thread = threading.Thread(target=person)
    thread.start()
    try:
        # Training goes on, in chunks, until the person has answered every query (or a generous cap).
        model.learn(512)
        while len(clicks) < 12 and model.num_timesteps < 20_000 and thread.is_alive():
            model.learn(256, reset_num_timesteps=False)
        assert env.learner.flush(timeout=60)
    finally:
        stop.set()
        thread.join()
        env.close()
    records = LabelStore(tmp_path / "labels.sqlite").records()
    assert len(clicks) == len(records) == 12
    assert sorted(r.preference for r in records) == sorted({"left": 0, "right": 1}[c] for _, c, _ in clicks)
    assert env.learner.metrics["labels_used"] == 12 and env.learner.metrics["queries_answered"] == 12
    # The run stepped on while the person labelled: the clicks came at different steps of training.
    assert len({step for *_, step in clicks}) > 1


def test_the_labelling_page_needs_its_token_off_loopback_and_serves_no_file():
    with pytest.raises(ValueError, match="at least 8"):
        HumanLabeler(port=0, token="short")
    labeler = HumanLabeler(host="0.0.0.0", port=0)
    try:
        token = labeler.server.token
        assert token and f"token={token}" in labeler.url
        base = labeler.url.split("?")[0]
        assert _request(base)[0] == 401
        assert _request(base + "?token=not-the-right-token")[0] == 401
        assert _request(base + "api/next", {"person": "p"})[0] == 401
        assert _request(base + "api/answer", {"pair_id": "0" * 32, "person": "p", "choice": "left"})[0] == 401
        assert _request(labeler.url)[0] == 200
        assert _request(base + "api/next", {"person": "p"}, {"Authorization": f"Bearer {token}"})[0] == 200
        status, _, headers = _request(labeler.url, with_headers=True)
        cookie = headers["set-cookie"].split(";")[0]
        assert _request(base + "api/next", {"person": "p"}, {"Cookie": cookie})[0] == 200
        for attempt in ("../../etc/passwd", "pair/..%2F..%2Fetc%2Fpasswd/a.png", f"pair/{'0' * 32}/a.png",
                        "pair/%2e%2e/%2e%2e/etc/passwd"):
            status, body = _request(base + attempt + f"?token={token}")
            assert status == 404 and b"root:" not in body, attempt
    finally:
        labeler.close()


def test_on_loopback_other_sites_cannot_reach_or_post_to_the_page():
    labeler = HumanLabeler(port=0)
    try:
        base = labeler.url
        assert _request(base + "api/next", {"person": "p"})[0] == 200
        # DNS rebinding: another site's name resolving to 127.0.0.1.
        assert _request(base, headers={"Host": "attacker.example"})[0] == 400
        # A page of another site posting an answer.
        assert _request(base + "api/answer", {"pair_id": "0" * 32, "person": "p", "choice": "left"},
                        {"Origin": "http://attacker.example"})[0] == 403
        assert _request(base + "api/next", {"person": "p"}, {"Origin": base.rstrip("/")})[0] == 200
    finally:
        labeler.close()


def test_text_from_the_goal_and_labelers_is_escaped_in_every_page(tmp_path):
    from vlm_reward_wrappers.label_store import LabelRecord, frame_hash
    from vlm_reward_wrappers.web.inspect import serve_inspect

    evil = "<script>alert(1)</script>"
    store = LabelStore(tmp_path / "labels.sqlite")
    a, b = np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8)
    store.add(LabelRecord(frame_hash(a), frame_hash(b), evil, evil, "v", 0, raw=evil), a, b)
    store.close()
    server = serve_inspect(tmp_path / "labels.sqlite")
    try:
        _, page = _request(server.url)
        assert b"<script>" not in page and page.count(b"&lt;script&gt;") >= 3
    finally:
        server.close()


def test_a_pair_held_past_its_lease_goes_to_the_next_person():
    now = [0.0]
    queue = PairQueue(lease_s=0.2, clock=lambda: now[0])
    pair = queue.put(GOAL, np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8))
    assert queue.next("ann") is pair and queue.next("bob") is None
    now[0] = 0.19
    assert queue.next("bob") is None and queue.held(pair.pair_id)  # still Ann's
    now[0] = 0.21
    assert queue.next("bob") is pair and queue.held(pair.pair_id)
    assert not queue.renew(pair.pair_id, "ann")  # ann's page can no longer keep it
    # Ann's late click still counts (a click is never thrown away); Bob's then finds the pair gone.
    assert queue.answer(pair.pair_id, "ann", "right", name="Ann") and pair.answer.preference == 1
    assert not queue.answer(pair.pair_id, "bob", "left")
    assert queue.answered_by == {"Ann": 1} and len(queue) == 0


def test_a_pair_no_one_answers_is_taken_off_the_page_and_dropped():
    labeler = HumanLabeler(port=0, wait_s=0.3)
    with pytest.raises(LabelerUnavailableError, match="no one answered"):
        labeler.label(_queries(1), GOAL)
    assert len(labeler.queue) == 0
    service = LabellingService(labeler, GOAL, LabelStore(), RetryPolicy(max_retries=1, backoff_s=0.0),
                               asynchronous=False)
    service.submit([PreferenceJob(_queries(1)[0])])
    assert service.counts["dropped"] == 1 and service.counts["failed_calls"] == 2
    service.close()


def test_a_pair_someone_has_open_waits_for_them():
    labeler = HumanLabeler(port=0, wait_s=0.2, lease_s=1.0)
    outcome = {}

    def ask():
        started = time.monotonic()
        try:
            labeler.label(_queries(1), GOAL)
        except LabelerUnavailableError:
            outcome["gave up after"] = time.monotonic() - started

    thread = threading.Thread(target=ask)
    thread.start()
    while not len(labeler.queue):
        time.sleep(0.01)
    assert labeler.queue.next("ann") is not None  # opened at once, then left open without an answer
    thread.join(timeout=10)
    labeler.close()
    assert outcome["gave up after"] >= 1.0  # its lease, not the 0.2 s wait for someone to open it


def test_the_service_warns_when_its_deadline_is_shorter_than_a_human_labelers_calls(caplog):
    labeler = HumanLabeler(port=0, wait_s=300)
    with caplog.at_level("WARNING"):
        LabellingService(labeler, GOAL, LabelStore()).close()
    assert "retry=RetryPolicy(deadline_s=" in caplog.text


def test_people_label_an_offline_dataset():
    dataset = cartpole_dataset(n_episodes=2, horizon=10)
    labeler = HumanLabeler(port=0, wait_s=20)
    answered = []

    def person():  # a script answering through the page's API, as the page does
        deadline = time.monotonic() + 60
        while len(answered) < 6 and time.monotonic() < deadline:
            status, body = _request(labeler.url + "api/next", {"person": "script"})
            pair = json.loads(body)["pair_id"]
            if pair is None:
                time.sleep(0.05)
                continue
            if _request(labeler.url + f"pair/{pair}/a.png")[0] == 200 and _request(
                    labeler.url + "api/answer", {"pair_id": pair, "person": "script", "choice": "left"})[0] == 200:
                answered.append(pair)

    thread = threading.Thread(target=person)
    thread.start()
    store = LabelStore()
    relabeler = PreferenceRelabeler(labeler, GOAL, store, n_queries=6, reward_image_size=48, ensemble_size=1, epochs=2)
    rewards = relabeler.relabel(dataset)
    thread.join(timeout=60)
    relabeler.close()
    assert len(answered) == len(store.records()) == 6 and relabeler.metrics["labels_used"] == 6
    assert [len(r) for r in rewards] == [len(e) for e in dataset.episodes]


def test_the_command_line_serves_the_labelling_page(capsys):
    from vlm_reward_wrappers.cli import build_parser, make_labeler

    args = build_parser().parse_args(["train", "--labeler", "human", "--human-port", "0"])
    labeler = make_labeler(args)
    try:
        assert isinstance(labeler, HumanLabeler) and labeler.url in capsys.readouterr().err
        assert _request(labeler.url)[0] == 200
    finally:
        labeler.close()
