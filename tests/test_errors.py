"""Each bad input gets an error that names the problem and the fix."""

import sqlite3

import gymnasium as gym
import numpy as np
import pytest

from conftest import GOAL
from fakes import FakeLabeler
from vlm_reward_wrappers import LabelStore, LearnerConfig, OracleLabeler, RewardModel, VLMRewardWrapper, reward_nets
from vlm_reward_wrappers.labelers import Answer, InvalidAnswerError


def _cartpole():
    return gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array")


def test_a_labeler_that_is_not_a_labeler():
    with pytest.raises(TypeError, match=r"labeler must be a Labeler.*OpenAICompatibleLabeler\(base_url, 'gpt-4'\)"):
        VLMRewardWrapper(_cartpole(), goal=GOAL, labeler="gpt-4")


@pytest.mark.parametrize("setting, value, least", [
    ("feedback_budget", -1, 0), ("query_every", 0, 1), ("pairs_per_query", 0, 1), ("seed_steps", -5, 0),
])
def test_schedule_settings_out_of_range(setting, value, least):
    with pytest.raises(ValueError, match=rf"{setting} must be a whole number of at least {least}, got {value}"):
        VLMRewardWrapper(_cartpole(), goal=GOAL, labeler=OracleLabeler(), **{setting: value})


def test_an_empty_goal():
    with pytest.raises(ValueError, match="goal must describe the task in words"):
        VLMRewardWrapper(_cartpole(), goal="  ", labeler=OracleLabeler())


def test_a_label_store_in_a_folder_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"the folder .*missing does not exist; create it first"):
        LabelStore(tmp_path / "missing" / "labels.sqlite")


def test_a_label_store_on_a_file_that_is_not_one(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a database, just words " * 100)
    with pytest.raises(ValueError, match=r"notes.txt is not a label store.*pass a new file name"):
        LabelStore(text)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE labels (id INTEGER, text TEXT)")
    with pytest.raises(ValueError, match=r"is not a label store .*table 'labels' has no column 'preference'"):
        LabelStore(other)


def test_clip_without_weights_says_how_to_get_them_or_to_ask_for_random_ones():
    from vlm_reward_wrappers.labelers.clip import CLIPEmbedder, CLIPLabeler

    with pytest.raises(ValueError, match=r"exactly one of checkpoint_path=.*'random' for untrained"):
        CLIPLabeler("ViT-B-32")
    with pytest.raises(ValueError, match="exactly one of"):
        CLIPEmbedder("ViT-B-32", checkpoint_path="w.pt", pretrained="openai")


class FloatRender(gym.Wrapper):
    """Renders the way some custom envs do: floats in 0-1, or ints beyond 255."""

    def __init__(self, env, scale):
        super().__init__(env)
        self.scale = scale

    def render(self):
        frame = self.env.render()
        return frame / 255.0 if self.scale == "float" else frame.astype(np.int32) * 4


@pytest.mark.parametrize("scale, message", [
    ("float", r"has dtype float64; frames must be uint8 rgb in 0-255.*astype\(np.uint8\)"),
    ("int", r"has values from 0 to 1020; frames must be uint8 rgb in 0-255"),
])
def test_a_render_that_is_not_uint8_rgb(scale, message):
    env = VLMRewardWrapper(FloatRender(_cartpole(), scale), goal=GOAL, labeler=OracleLabeler())
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(env.action_space.sample())


def test_an_env_that_does_not_render_frames():
    with pytest.raises(ValueError, match=r"render_mode='rgb_array'"):
        VLMRewardWrapper(gym.make("vlmrw/CartPoleAngle-v0"), goal=GOAL, labeler=OracleLabeler())


def test_a_labeler_takes_plain_pairs_of_frames_and_says_what_else_to_pass():
    brighter = FakeLabeler(answers=lambda queries: [Answer(int(q.frame_b.mean() > q.frame_a.mean())) for q in queries])
    dark, bright = np.full((8, 8, 3), 10, np.uint8), np.full((8, 8, 3), 200, np.uint8)
    assert [a.preference for a in brighter.label([(dark, bright), [bright, dark]], GOAL)] == [1, 0]
    a, b = dark, bright
    with pytest.raises(TypeError, match=r"a query is a Query\(frame_a, frame_b\) or a pair \(frame_a, frame_b\)"):
        OracleLabeler().label([a], GOAL)
    with pytest.raises(ValueError, match=r"frame_b must be an \(H, W, 3\) rgb image"):
        OracleLabeler().label([(a, b[..., 0])], GOAL)


def test_a_labeler_returning_the_wrong_number_of_answers_is_a_bug_in_it():
    too_many = FakeLabeler(answers=lambda queries: [Answer(0)] * (len(queries) + 1))
    frame = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InvalidAnswerError, match="returned 2 answers for 1 requests: a bug in the labeler"):
        too_many.label([(frame, frame)], GOAL)
    with pytest.raises(InvalidAnswerError, match="preference must be 0, 1 or -1, got 2"):
        Answer(2)


def test_a_reward_model_that_does_not_match_the_wrapper():
    model = RewardModel("frame", (48, 48, 3), seed=0)
    with pytest.raises(ValueError, match=r"reward_model given reads frame inputs of shape \(48, 48, 3\).*reward_image_size"):
        VLMRewardWrapper(_cartpole(), goal=GOAL, labeler=OracleLabeler(), reward_model=model)
    VLMRewardWrapper(_cartpole(), goal=GOAL, labeler=OracleLabeler(), reward_model=model, reward_image_size=48)
    resnet = RewardModel("frame", (64, 64, 3), ensemble_size=1, reward_net="resnet18", seed=0)
    with pytest.raises(ValueError, match=r"\(resnet18, uncertainty_penalty 0.0\), but the settings ask .* reward_net 'cnn'"):
        VLMRewardWrapper(_cartpole(), goal=GOAL, labeler=OracleLabeler(), reward_model=resnet, ensemble_size=1)
    VLMRewardWrapper(_cartpole(), goal=GOAL, labeler=OracleLabeler(), reward_model=resnet, ensemble_size=1,
                     reward_net="resnet18")


def test_an_unknown_reward_net():
    with pytest.raises(ValueError, match=r"reward_net must be one of \('cnn', 'resnet18'\), got 'vit'"):
        LearnerConfig(reward_net="vit")
    with pytest.raises(ValueError, match="reward_net 'resnet18' reads frames"):
        LearnerConfig(reward_input="observation", reward_net="resnet18")
    with pytest.raises(ValueError, match="reward_net 'resnet18' reads frames"):
        RewardModel("observation", (4,), reward_net="resnet18")


def test_the_resnet_reward_net_without_torchvision(monkeypatch):
    def missing():
        raise ModuleNotFoundError("No module named 'torchvision'")

    monkeypatch.setattr(reward_nets, "import_torchvision", missing)
    with pytest.raises(ImportError, match=r"reward_net='resnet18' needs torchvision: pip install 'vlm-reward-wrappers\[resnet\]'"):
        RewardModel("frame", (64, 64, 3), reward_net="resnet18")


def test_a_missing_reward_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no reward model at .*RewardModel.save\(path\)"):
        RewardModel.load(tmp_path / "nope.pt")


def test_the_label_browser_on_a_missing_or_foreign_file(tmp_path):
    from vlm_reward_wrappers.web.inspect import StoreReader

    with pytest.raises(FileNotFoundError, match=r"no label store at .*LabelStore\(path\)"):
        StoreReader(tmp_path / "nope.sqlite")
    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.execute("CREATE TABLE things (x)")
    other.commit()
    other.close()
    with pytest.raises(ValueError, match="is not a label store"):
        StoreReader(tmp_path / "other.sqlite")
    (tmp_path / "text.sqlite").write_text("not a database at all")
    with pytest.raises(ValueError, match="is not a label store"):
        StoreReader(tmp_path / "text.sqlite")


def test_pages_without_the_web_extra_say_how_to_install_it(monkeypatch):
    import sys

    from vlm_reward_wrappers.labelers.human import HumanLabeler

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ImportError, match=r"pip install 'vlm-reward-wrappers\[web\]'"):
        HumanLabeler(port=0)
