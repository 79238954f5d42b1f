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
from vlm_reward_wrappers.labelers.human import HumanLabeler, PairQueue
from vlm_reward_wrappers.labelling import LabellingService, PreferenceJob, RetryPolicy
from vlm_reward_wrappers.labels import LabelStore
from vlm_reward_wrappers.offline import PreferenceRelabeler

from offline_data import cartpole_dataset  # noqa: E402


def _queries(n):
    frames = [np.full((30, 40, 3), 20 * k, dtype=np.uint8) for k in range(2 * n)]
    return [Query(frames[2 * k], frames[2 * k + 1], float(k), float(k + 1)) for k in range(n)]


def _request(url, data=None):
    request = urllib.request.Request(url, None if data is None else json.dumps(data).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


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
        first.get("about:blank")  # the page is closed mid-pair
        second.find_element("id", "right").click()
        assert _shown_pair(second, other_than=held_by_second) == held_by_first
        second.find_element("tag name", "body").send_keys(Keys.ARROW_LEFT)
        third = _shown_pair(second, other_than=held_by_first)
        second.find_element("tag name", "body").send_keys(" ")
        assert third not in (held_by_first, held_by_second)
        assert service.wait(timeout=20)
    finally:
        first.quit()
        second.quit()
        service.close()
    answers = sorted(record.preference for _, record in service.poll())
    assert answers == [-1, 0, 1]  # can't tell, left, right: each click in the store
    assert [r.preference for r in store.records()] == [1, 0, -1]  # in the order clicked
    assert all("answered by" in r.raw for r in store.records())


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
        model.learn(1536)
        assert env.learner.flush(timeout=60)
    finally:
        stop.set()
        thread.join()
        env.close()
    records = LabelStore(tmp_path / "labels.sqlite").records()
    assert len(clicks) == len(records) == 12
    assert [r.preference for r in records] == [{"left": 0, "right": 1}[c] for _, c, _ in clicks]
    assert env.learner.metrics["labels_used"] == 12 and env.learner.metrics["queries_answered"] == 12
    # The run stepped on while the person labelled: the clicks came at different steps of training.
    assert len({step for *_, step in clicks}) > 1


def test_the_labelling_page_needs_its_token_off_loopback_and_serves_no_file():
    with pytest.raises(ValueError, match="at least 8"):
        HumanLabeler(port=0, token="short")
    labeler = HumanLabeler(host="0.0.0.0", port=0)
    try:
        assert labeler.server.token and f"token={labeler.server.token}" in labeler.url
        base = labeler.url.split("?")[0]
        assert _request(base)[0] == 401
        assert _request(base + "api/next?person=p")[0] == 401
        assert _request(base + "api/answer", {"pair_id": "0" * 32, "person": "p", "choice": "left"})[0] == 401
        assert _request(labeler.url)[0] == 200
        token = f"?token={labeler.server.token}"
        for attempt in ("../../etc/passwd", "pair/..%2F..%2Fetc%2Fpasswd/a.png", f"pair/{'0' * 32}/a.png",
                        "pair/%2e%2e/%2e%2e/etc/passwd"):
            status, body = _request(base + attempt + token)
            assert status == 404 and b"root:" not in body, attempt
    finally:
        labeler.close()


def test_a_pair_held_past_its_lease_goes_to_the_next_person():
    queue = PairQueue(lease_s=0.2)
    pair = queue.put(GOAL, np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8))
    assert queue.next("ann") is pair and queue.next("bob") is None
    time.sleep(0.3)
    assert queue.next("bob") is pair
    assert not queue.answer(pair.pair_id, "ann", "left")  # bob holds it now
    assert queue.answer(pair.pair_id, "bob", "right", name="Bob") and pair.answer.preference == 1
    assert queue.answered_by == {"Bob": 1} and len(queue) == 0


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


def test_people_label_an_offline_dataset():
    dataset = cartpole_dataset(n_episodes=2, horizon=10)
    labeler = HumanLabeler(port=0)
    answered = []

    def person():  # a script answering through the page's API, as the page does
        deadline = time.monotonic() + 60
        while len(answered) < 6 and time.monotonic() < deadline:
            status, body = _request(labeler.url + "api/next?person=script")
            pair = json.loads(body)["pair_id"]
            if pair is None:
                time.sleep(0.05)
                continue
            assert _request(labeler.url + f"pair/{pair}/a.png")[0] == 200
            assert _request(labeler.url + "api/answer", {"pair_id": pair, "person": "script", "choice": "left"})[0] == 200
            answered.append(pair)

    thread = threading.Thread(target=person)
    thread.start()
    store = LabelStore()
    relabeler = PreferenceRelabeler(labeler, GOAL, store, n_queries=6, reward_image_size=48, ensemble_size=1, epochs=2)
    rewards = relabeler.relabel(dataset)
    thread.join()
    relabeler.close()
    assert len(answered) == len(store.records()) == 6 and relabeler.metrics["labels_used"] == 6
    assert [len(r) for r in rewards] == [len(e) for e in dataset.episodes]
