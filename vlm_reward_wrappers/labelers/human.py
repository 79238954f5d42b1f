"""People as the labeler: pairs are answered in a browser page while the agent trains.

:class:`HumanLabeler` serves a page (:mod:`vlm_reward_wrappers.web.labelling_page`) showing the goal
and two frames side by side. Each pair the labelling service sends waits in a :class:`PairQueue`
until a person answers it; several people may label at once, each holding one pair at a time, and a
pair not answered within its lease (a closed tab, a person gone for coffee) goes back to the queue.
Answers go through the labelling service like any labeler's, so each is in the label store before it
is used; training never waits for people (``asynchronous`` learners, the default).
"""

from __future__ import annotations

import threading
import time
from typing import Dict, List, Optional, Sequence

from vlm_reward_wrappers.frames import resize_longer_side
from vlm_reward_wrappers.labelers.base import Answer, Labeler, LabelerRefusedError, LabelerUnavailableError, Query
from vlm_reward_wrappers.labelers.pair_queue import PairQueue

class HumanLabeler(Labeler):
    """A labeler whose queries are answered by people in a browser.

    It serves its page as soon as it is made: open :attr:`url`. On loopback (the default) only this
    machine can reach it; bound to any other address, every request must carry the access token
    (a random one unless ``token`` is given), which :attr:`url` includes.

    Each pair is its own call, so an answer is committed the moment it is clicked. A pair no one has
    opened after ``wait_s`` seconds is taken off the page and its call fails, to be retried by the
    labelling service's :class:`~vlm_reward_wrappers.labelling_service.RetryPolicy`; a pair someone has open
    waits for them, ``lease_s`` longer at most. A call thus lasts up to ``wait_s + lease_s``
    (:attr:`longest_call_s`): with the defaults (120 s + 60 s, 2 retries, 1 s backoff) three calls fit
    the policy's 600 s deadline, so no click lands on a call already given up; the service warns
    where they would not.

    :param host: address to serve on.
    :param port: port to serve on; 0 picks a free one.
    :param token: access token; required off loopback (a random one is made if None).
    :param lease_s: seconds a pair stays with a person whose page stopped renewing it (closed, offline)
        before it goes back to the queue; an open page renews it.
    :param wait_s: seconds a pair waits for someone to open it before its call fails.
    :param query_image_size: longer side in pixels of the frames shown.
    :param max_concurrency: pairs on the page at once (each waits on its own labelling thread).
    """

    batch_size = 1
    prompt_version = "human-v1"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        token: Optional[str] = None,
        lease_s: float = 60.0,
        wait_s: float = 120.0,
        query_image_size: int = 512,
        max_concurrency: int = 256,
    ) -> None:
        from vlm_reward_wrappers.web.labelling_page import serve_labelling_page
        from vlm_reward_wrappers.web.server import access_token

        if not wait_s > 0:
            raise ValueError(f"wait_s must be positive, got {wait_s}")
        self.wait_s = wait_s
        self.longest_call_s = wait_s + lease_s
        self.query_image_size = query_image_size
        self.max_concurrency = max_concurrency
        self.queue = PairQueue(lease_s)
        self._closed = threading.Event()
        self.server = serve_labelling_page(self.queue, host, port, access_token(host, token))

    @property
    def url(self) -> str:
        """The labelling page's address (with its access token where one is needed)."""
        return self.server.url

    @property
    def metrics(self) -> Dict[str, float]:
        """Pairs waiting on the page, and people who have answered."""
        return {"waiting_pairs": len(self.queue), "people": len(self.queue.answered_by)}

    def compare(self, queries: Sequence[Query], goal: str) -> List[Answer]:
        answers = []
        for query in queries:
            frame_a = resize_longer_side(query.frame_a, self.query_image_size)
            frame_b = resize_longer_side(query.frame_b, self.query_image_size)
            pair = self.queue.put(goal, frame_a, frame_b)
            started = time.monotonic()
            while not pair.done.wait(0.2):
                waited = time.monotonic() - started
                if self._closed.is_set():
                    if self.queue.withdraw(pair.pair_id):
                        raise LabelerRefusedError("the human labeler was closed")
                elif waited > self.longest_call_s or (waited > self.wait_s and not self.queue.held(pair.pair_id)):
                    if self.queue.withdraw(pair.pair_id):  # else answered meanwhile: done is set
                        raise LabelerUnavailableError(f"no one answered the pair within {waited:.0f} s")
            answers.append(pair.answer)
        return answers

    def close(self) -> None:
        """Stop serving the page; pairs still waiting are given up."""
        self._closed.set()
        self.server.close()
