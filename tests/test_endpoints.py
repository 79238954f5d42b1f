"""Several OpenAI-compatible servers behind one labeler: requests spread over them, a dead one skipped."""

import numpy as np
import pytest

from conftest import GOAL
from scripted_server import ScriptedServer
from vlm_reward_wrappers.labelers import LabelerUnavailableError, OpenAICompatibleLabeler, Query
from vlm_reward_wrappers.labelling_service import LabellingService, PreferenceJob, RetryPolicy
from vlm_reward_wrappers.label_store import LabelStore


def _jobs(n, seed):
    rng = np.random.default_rng(seed)
    return [PreferenceJob(Query(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
                                rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))) for _ in range(n)]


def test_requests_spread_over_servers_and_a_killed_one_loses_no_query():
    servers = [ScriptedServer(), ScriptedServer()]
    labeler = OpenAICompatibleLabeler([s.url for s in servers], "tiny", two_stage=False, max_concurrency=2,
                                      timeout_s=5, cooldown_s=60)
    service = LabellingService(labeler, GOAL, LabelStore(), RetryPolicy(max_retries=0), asynchronous=False)
    service.submit(_jobs(10, seed=0))
    assert servers[0].requests == servers[1].requests == 5  # in turn
    servers[1].stop()  # mid-run
    service.submit(_jobs(20, seed=1))
    answered = service.poll()
    assert len(answered) == 30 and all(record.preference == 1 for _, record in answered)
    assert service.counts["dropped"] == service.counts["failed_calls"] == 0  # every query answered, none lost
    assert servers[0].requests == 25  # the survivor took all the rest
    servers[0].stop()


def test_when_every_server_is_down_the_error_names_each():
    servers = [ScriptedServer(), ScriptedServer()]
    for server in servers:
        server.stop()
    labeler = OpenAICompatibleLabeler([s.url for s in servers], "tiny", two_stage=False, timeout_s=5)
    frame = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(LabelerUnavailableError) as error:
        labeler.label([(frame, frame)], GOAL)
    assert all(s.url in str(error.value) for s in servers)
