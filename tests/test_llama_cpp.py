"""LlamaCppLabeler through the real llama_cpp.Llama + chat handler path, on a tiny random VLM."""

import ctypes
import re
import sys
import threading
import time

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from conftest import GOAL  # noqa: E402
from tiny_models import write_tiny_vlm  # noqa: E402
from vlm_reward_wrappers import LabelStore, VLMRewardWrapper  # noqa: E402
from vlm_reward_wrappers.cli import build_parser, make_labeler  # noqa: E402
from vlm_reward_wrappers.labelers import (  # noqa: E402
    NO_PREFERENCE,
    ChatPreferenceLabeler,
    LlamaCppLabeler,
    Query,
    SwapConsistentLabeler,
)
from vlm_reward_wrappers.labelers.prompts import parse_preference  # noqa: E402
from vlm_reward_wrappers.label_store import frame_hash  # noqa: E402

# One thread each: the test machines have 2 cores, shared (shared/notes/local-vlm.md).
FAST = dict(n_ctx=2048, n_threads=1, n_threads_batch=1, max_analysis_tokens=32)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return write_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))


@pytest.fixture
def query():
    rng = np.random.default_rng(0)
    return Query(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))


def _answer_line(raw):
    return raw.rsplit("[answer] ", 1)[-1]


@pytest.mark.parametrize("two_stage", [True, False])
def test_two_image_query_returns_a_well_formed_preference(tiny_vlm, query, two_stage):
    labeler = LlamaCppLabeler(*tiny_vlm, two_stage=two_stage, **FAST)
    try:
        answers = labeler.label([query, query], GOAL)
    finally:
        labeler.close()
    assert len(answers) == 2 and answers[0] == answers[1]  # temperature 0: deterministic
    answer = answers[0]
    assert answer.preference == parse_preference(_answer_line(answer.raw))
    assert answer.soft is None
    assert ("[answer] " in answer.raw) == two_stage
    assert labeler.prompt_version == ("rlvlmf-two-stage-v1" if two_stage else "rlvlmf-single-stage-v1")


def test_garbage_output_is_no_preference_with_the_raw_text_kept(tiny_vlm, query):
    labeler = LlamaCppLabeler(*tiny_vlm, **FAST)
    try:
        answer = labeler.label([query], GOAL)[0]
    finally:
        labeler.close()
    # The random model writes gibberish (no digit, no "image k"): that must read as no preference.
    assert not re.search(r"\d|image", _answer_line(answer.raw), re.I)
    assert answer.preference == NO_PREFERENCE and answer.raw.strip()


def test_soft_labels_come_from_the_answer_token_probabilities(tiny_vlm, query):
    labeler = LlamaCppLabeler(*tiny_vlm, soft_labels=True, **FAST)
    try:
        answer = labeler.label([query], GOAL)[0]
    finally:
        labeler.close()
    probs = {k: float(v) for k, v in re.findall(r"p\((-?\d)\)=([\d.]+)", answer.raw)}
    assert set(probs) == {"0", "1", "-1"} and sum(probs.values()) == pytest.approx(1.0, abs=2e-3)
    assert answer.soft == pytest.approx(probs["1"] / (probs["0"] + probs["1"]), abs=2e-3)
    assert answer.preference == {"0": 0, "1": 1, "-1": -1}[max(probs, key=probs.get)]
    assert "soft_labels=True" in labeler.labeler_id


class _ChunkRecorder:
    """Stands in for a chat handler's libmtmd bindings and records the prompt really tokenized.

    After each ``mtmd_tokenize`` it reads the chunks back: ("text", detokenized text) or ("image", n).
    """

    def __init__(self, mtmd, llama):
        self._mtmd, self._llama = mtmd, llama
        self.prompts = []

    def __getattr__(self, name):
        return getattr(self._mtmd, name)

    def mtmd_tokenize(self, ctx, chunks, text, bitmaps, n_bitmaps):
        result = self._mtmd.mtmd_tokenize(ctx, chunks, text, bitmaps, n_bitmaps)
        mtmd, prompt = self._mtmd, []
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                tokens = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                piece = self._llama.detokenize([tokens[j] for j in range(n.value)]).decode(errors="replace")
                prompt.append(("text", piece))
            else:
                prompt.append(("image", mtmd.mtmd_input_chunk_get_n_tokens(chunk)))
        self.prompts.append(prompt)
        return result


@pytest.mark.parametrize(
    "handler, layout", [("auto", "interleaved"), ("mtmd", "interleaved"), ("llava-1-5", "captioned")]
)
def test_the_prompt_really_built_keeps_each_caption_beside_its_image(tiny_vlm, query, handler, layout):
    labeler = LlamaCppLabeler(*tiny_vlm, chat_handler=handler, **FAST)
    backend = labeler.backend
    recorder = _ChunkRecorder(backend.chat_handler._mtmd_cpp, backend.llama)
    backend.chat_handler._mtmd_cpp = recorder
    try:
        labeler.label([query], GOAL)
    finally:
        labeler.close()
    assert backend.layout == layout
    stage1, stage2 = recorder.prompts
    assert [kind for kind, _ in stage2] == ["text"]  # stage 2 is text only, as in RL-VLM-F
    kinds = [kind for kind, _ in stage1]
    assert kinds.count("image") == 2 and all(n == 16 for kind, n in stage1 if kind == "image")
    for k, at in enumerate(i for i, kind in enumerate(kinds) if kind == "image"):
        if layout == "interleaved":
            assert re.search(rf"Image {k + 1}:\s*$", stage1[at - 1][1]), stage1
        else:
            assert re.match(rf"\s*This is Image {k + 1}\.", stage1[at + 1][1]), stage1
    last_text = stage1[-1][1]
    assert "What is shown in Image 1?" in last_text and GOAL in last_text


def test_trains_inside_the_wrapper_with_answers_in_the_store(tiny_vlm):
    labeler = LlamaCppLabeler(*tiny_vlm, two_stage=False, **FAST)
    asked = {}  # (hash_a, hash_b) -> preference: every answer the model gave
    compare = labeler.compare

    def recording_compare(queries, goal):
        answers = compare(queries, goal)
        for query, answer in zip(queries, answers):
            asked[frame_hash(query.frame_a), frame_hash(query.frame_b)] = answer.preference
        return answers

    labeler.compare = recording_compare
    store = LabelStore()
    env = VLMRewardWrapper(
        gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array"), goal=GOAL, labeler=labeler,
        reward_image_size=48, seed=0, label_store=store, asynchronous=False, seed_steps=8, query_every=8,
        pairs_per_query=3,
    )
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(17):
        env.step(env.action_space.sample())
    metrics = env.learner.metrics
    env.close()  # closes the labeler too
    # Two batches of 3 pairs were due (steps 8 and 16). A pair whose two frames are identical by
    # content to a pair already drawn is sent once, so the learner's own count is the reference.
    assert 3 < metrics["queries_issued"] <= 6
    assert metrics["labeler_failures"] == metrics["queries_dropped"] == 0
    assert metrics["queries_answered"] + metrics["queries_cached"] == metrics["queries_issued"]
    assert metrics["queries_answered"] == len(asked)
    # Every answer the model gave is in the store, as given.
    records = store.records(GOAL, labeler.labeler_id, labeler.prompt_version)
    assert {(r.hash_a, r.hash_b): r.preference for r in records} == asked and len(records) == len(asked)
    assert all(r.raw and r.preference in (-1, 0, 1) for r in records)


def test_missing_files_name_what_to_download(tiny_vlm, tmp_path):
    model, projector = tiny_vlm
    with pytest.raises(FileNotFoundError, match=r"VLM model file .*SmolVLM"):
        LlamaCppLabeler(tmp_path / "nope.gguf", projector)
    with pytest.raises(FileNotFoundError, match=r"mmproj"):
        LlamaCppLabeler(model, tmp_path / "nope.gguf")
    with pytest.raises(ValueError, match="chat_handler"):
        LlamaCppLabeler(model, projector, chat_handler="llava-9")


def test_missing_llama_cpp_names_the_extra(tiny_vlm, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ImportError, match=r"pip install 'vlm-reward-wrappers\[llama\]'"):
        LlamaCppLabeler(*tiny_vlm)


def test_the_cli_builds_it_from_its_options(tiny_vlm):
    model, projector = map(str, tiny_vlm)
    args = build_parser().parse_args(["train", "--labeler", "llama", "--model-path", model, "--mmproj-path",
                                      projector, "--chat-handler", "llava-1-5", "--vlm-threads", "1", "--single-stage"])
    labeler = make_labeler(args)
    labeler.close()
    assert isinstance(labeler, ChatPreferenceLabeler) and labeler.backend.chat_handler_name == "llava-1-5"
    assert labeler.prompt_version == "rlvlmf-single-stage-v1" and labeler.backend.llama.n_threads == 1
    with pytest.raises(SystemExit, match="--mmproj-path"):
        make_labeler(build_parser().parse_args(["train", "--labeler", "llama", "--model-path", model]))


def test_swap_consistency_asks_the_tiny_vlm_both_ways_round(tiny_vlm, query):
    inner = LlamaCppLabeler(*tiny_vlm, two_stage=False, **FAST)
    asked = []
    real = inner.backend.chat
    inner.backend.chat = lambda messages, max_tokens: (asked.append(messages), real(messages, max_tokens))[1]
    labeler = SwapConsistentLabeler(inner)
    try:
        [answer] = labeler.label([query], GOAL)
    finally:
        labeler.close()
    first, second = ([part["image_url"]["url"] for part in m[0]["content"] if part["type"] == "image_url"] for m in asked)
    assert len(asked) == 2 and first == second[::-1]  # the same two images, in the other order
    # The random model's gibberish is no preference in either order: nothing stands.
    assert answer.preference == NO_PREFERENCE and "[swapped order]" in answer.raw
    assert labeler.metrics["swap_pairs"] == 1 and labeler.prompt_version == "rlvlmf-single-stage-v1+swap"


def test_the_audit_runs_end_to_end_with_the_tiny_vlm(tiny_vlm, tmp_path):
    import gymnasium as gym

    from vlm_reward_wrappers.audit import audit, write_report

    env = gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array")
    labeler = LlamaCppLabeler(*tiny_vlm, two_stage=False, query_image_size=96, **FAST)
    try:
        result = audit(env, GOAL, labeler, n_pairs=3, seed=0)
    finally:
        labeler.close()
        env.close()
    # Gibberish answers: all abstentions, each with its raw text, the images at the backend's size.
    assert result.pairs == 3 and result.abstention_rate == 1.0 and all(item["raw"] for item in result.items)
    assert result.latency_s_mean > 0 and write_report(result, tmp_path).is_file()


def test_close_ends_a_generation_in_flight_at_its_next_token(tiny_vlm):
    from vlm_reward_wrappers.labelers.backends import LlamaCppBackend

    messages = [{"role": "user", "content": "Describe the cart and the pole at length."}]
    backend = LlamaCppBackend(*tiny_vlm, n_ctx=2048, n_threads=1, n_threads_batch=1)
    full = backend.chat(messages, 1500)  # temperature 0: the same text every time, uncut
    tokens, started, closing, answer = [], threading.Event(), threading.Event(), {}

    def count_tokens(input_ids, scores):
        tokens.append(len(input_ids))
        if len(tokens) == 20:
            started.set()
            # Hold the generation at its 20th token until close() has begun, so a loaded machine that is slow
            # to schedule the closing thread cannot let it run on: close() marks itself closing first thing.
            closing.wait(60)
            time.sleep(1.0)
        return scores

    generation = threading.Thread(target=lambda: answer.setdefault("text", backend.chat(messages, 1500, [count_tokens])))
    generation.start()
    assert started.wait(60)
    closing.set()
    backend.close()  # waits for the generation, which ends at its next token
    generation.join(10)
    assert not generation.is_alive() and len(answer["text"]) < len(full)
    assert len(tokens) <= 21  # the 20th token's step ends it, or the one after
    backend.close()
