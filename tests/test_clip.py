"""CLIPLabeler and CLIPRewardWrapper on a random-weight open_clip model (nothing downloaded)."""

import importlib.util

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

# Not importorskip: a plain ``import open_clip`` fails here before the torchvision compatibility step.
if importlib.util.find_spec("open_clip") is None:
    pytest.skip("needs open-clip-torch: pip install 'vlm-reward-wrappers[clip]'", allow_module_level=True)

from conftest import GOAL  # noqa: E402
from vlm_reward_wrappers import CLIPRewardWrapper, VLMRewardWrapper  # noqa: E402
from vlm_reward_wrappers.cli import build_parser, make_labeler  # noqa: E402
from vlm_reward_wrappers.labelers import CLIPEmbedder, CLIPLabeler, Query  # noqa: E402
from vlm_reward_wrappers.torchvision_compat import import_torchvision  # noqa: E402

# A small architecture at 64 px: hundreds of frames a second on one core.
MODEL = dict(model_name="ViT-S-32", force_image_size=64)
RANDOM = dict(MODEL, pretrained="random")  # untrained weights, asked for by name
BASELINE = "a pole on a cart"


@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    return CLIPEmbedder(**RANDOM)


def _frames(n, seed=0, size=64):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_embeddings_are_unit_vectors(embedder):
    frames, texts = embedder.embed_frames(_frames(3)), embedder.embed_texts([GOAL, BASELINE])
    assert frames.shape == (3, 384) and texts.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(frames, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)


def test_clip_labeler_prefers_the_frame_more_similar_to_the_goal(embedder):
    a, b = _frames(6, seed=1), _frames(6, seed=2)
    labeler = CLIPLabeler(embedder)
    answers = labeler.label([Query(x, y) for x, y in zip(a, b)], GOAL)
    goal = embedder.embed_texts([GOAL])[0]
    difference = embedder.embed_frames(b) @ goal - embedder.embed_frames(a) @ goal
    assert [answer.preference for answer in answers] == [int(d > 0) for d in difference]
    expected_soft = 1 / (1 + np.exp(-embedder.logit_scale * difference))
    np.testing.assert_allclose([answer.soft for answer in answers], expected_soft, rtol=1e-4)
    assert all(answer.raw.startswith("similarity 1: ") for answer in answers)
    wide = CLIPLabeler(embedder, margin=float(np.abs(difference).max()))
    assert {answer.preference for answer in wide.label([Query(x, y) for x, y in zip(a, b)], GOAL)} == {-1}
    assert labeler.labeler_id == "CLIPLabeler(ViT-S-32, weights=random, margin=0.0)"


def test_clip_labeler_trains_the_reward_model_end_to_end_in_the_wrapper(embedder):
    env = VLMRewardWrapper(
        gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array"), goal=GOAL, labeler=CLIPLabeler(embedder),
        seed=0, asynchronous=False, seed_steps=32, query_every=32, pairs_per_query=16, epochs_per_update=2,
    )
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, verbose=0)
    model.learn(128)
    metrics = env.learner.metrics
    env.close()
    # Four batches of 16 pairs, less any pair of two identical frames (the sampler drops those).
    assert 48 < metrics["queries_issued"] == metrics["queries_answered"] + metrics["queries_cached"] <= 64
    assert metrics["labeler_failures"] == 0
    assert metrics["labels_used"] > 0 and metrics["reward_model/updates"] >= 1


def _vlm_rm_reward(x, g, b, alpha):
    """VLM-RM's formula written out term by term, in float64."""
    x, g, b = (np.asarray(v, dtype=np.float64) for v in (x, g, b))
    d = g - b
    projection = alpha * np.outer(d, d) / np.dot(d, d) + (1 - alpha) * np.eye(len(d))
    return 1 - 0.5 * np.linalg.norm((x - g) @ projection) ** 2


@pytest.mark.parametrize("baseline, alpha", [(None, 0.5), (BASELINE, 0.0), (BASELINE, 0.5), (BASELINE, 1.0)])
def test_clip_reward_wrapper_pays_the_vlm_rm_score(embedder, baseline, alpha):
    env = CLIPRewardWrapper(
        gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array"), goal=GOAL, baseline=baseline, alpha=alpha,
        model_name=embedder,
    )
    env.reset(seed=0)
    g = embedder.embed_texts([GOAL])[0]
    b = embedder.embed_texts([BASELINE])[0]
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        x = embedder.embed_frames([env.render()])[0]
        expected = float(x @ g) if baseline is None else _vlm_rm_reward(x, g, b, alpha)
        assert reward == pytest.approx(expected, abs=1e-5)
        assert info["gt_reward"] == pytest.approx(-abs(obs[2]), abs=1e-6)
    if alpha == 0.0:  # no regularisation: the plain CLIP score
        assert reward == pytest.approx(float(x @ g), abs=1e-5)
    env.close()


def test_clip_reward_wrapper_checks_its_arguments(embedder):
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        CLIPRewardWrapper(gym.make("vlmrw/CartPoleAngle-v0"), goal=GOAL, model_name=embedder)
    with pytest.raises(ValueError, match="alpha"):
        CLIPRewardWrapper(gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array"), GOAL, BASELINE, 1.5, embedder)


def test_weights_load_from_a_local_checkpoint(embedder, tmp_path):
    path = tmp_path / "clip.pt"
    torch.save(embedder.model.state_dict(), path)
    loaded = CLIPEmbedder(checkpoint_path=path, **MODEL)
    frames = _frames(2, seed=3)
    np.testing.assert_allclose(loaded.embed_frames(frames), embedder.embed_frames(frames), atol=1e-5)
    assert CLIPLabeler(loaded).labeler_id == "CLIPLabeler(ViT-S-32, weights=clip.pt, margin=0.0)"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CLIPEmbedder(checkpoint_path=tmp_path / "missing.pt", **MODEL)
    with pytest.raises(ValueError, match="exactly one of"):
        CLIPEmbedder(checkpoint_path=path, pretrained="openai", **MODEL)


def test_the_cli_builds_it_from_its_options(embedder, tmp_path):
    path = tmp_path / "clip.pt"
    torch.save(embedder.model.state_dict(), path)
    options = ["--labeler", "clip", "--clip-model", "ViT-S-32", "--clip-checkpoint", str(path), "--clip-margin", "0.01"]
    labeler = make_labeler(build_parser().parse_args(["train", *options]))
    assert labeler.labeler_id == "CLIPLabeler(ViT-S-32, weights=clip.pt, margin=0.01)"


def test_torchvision_imports_and_its_transforms_work():
    torchvision = import_torchvision()
    assert import_torchvision() is torchvision
    image = torch.rand(3, 20, 30)
    assert torchvision.transforms.Resize((8, 8))(image).shape == (3, 8, 8)
