from types import SimpleNamespace

import numpy as np
import psutil
import pytest
import torch

from vlm_reward_wrappers import (
    BradleyTerryTrainer, LearnerConfig, OracleLabeler, PreferenceDataset, PreferenceLearner, RewardModel,
)
from vlm_reward_wrappers.reward_model import random_shift


def _brightness_frames(n, rng, size=64):
    """Frames whose true reward is their brightness, with noise pixels so they are all distinct."""
    level = rng.uniform(0, 200, size=n)
    frames = (level[:, None, None, None] + rng.integers(0, 40, size=(n, size, size, 3))).astype(np.uint8)
    return frames, level


@pytest.mark.parametrize("augment_shift, reward_net, size", [(0, "cnn", 64), (4, "cnn", 64), (0, "resnet18", 32)])
def test_bradley_terry_training_learns_the_true_ranking(augment_shift, reward_net, size):
    rng = np.random.default_rng(0)
    frames, level = _brightness_frames(400, rng, size)
    model = RewardModel("frame", (size, size, 3), ensemble_size=3 if reward_net == "cnn" else 1,
                        reward_net=reward_net, seed=0)
    dataset = PreferenceDataset()
    for _ in range(300):
        i, j = rng.integers(400, size=2)
        dataset.add(frames[i], frames[j], int(level[j] > level[i]))
    stats = BradleyTerryTrainer(model, epochs=30, augment_shift=augment_shift, seed=0).train(dataset)
    assert model.version == 1 and stats.epochs <= 30
    held_out, held_level = _brightness_frames(200, rng, size)
    predicted = model.predict(held_out)
    a, b = rng.integers(200, size=(2, 1000))
    agree = np.mean((predicted[a] > predicted[b]) == (held_level[a] > held_level[b]))
    assert agree > 0.9


def test_training_stops_early_once_accurate():
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(200, 3)).astype(np.float32)
    dataset = PreferenceDataset()
    for i in range(0, 200, 2):
        dataset.add(obs[i], obs[i + 1], int(obs[i + 1, 0] > obs[i, 0]))
    model = RewardModel("observation", (3,), seed=0)
    stats = BradleyTerryTrainer(model, epochs=200, lr=1e-3, seed=0).train(dataset)
    assert stats.accuracy >= 0.97 and stats.epochs < 200


def test_dataset_drops_no_preference_and_identical_pairs():
    dataset = PreferenceDataset()
    a, b = np.zeros((4,)), np.ones((4,))
    assert not dataset.add(a, b, -1)
    assert not dataset.add(a, a.copy(), 0)
    assert dataset.add(a, b, 1)
    assert len(dataset) == 1
    with pytest.raises(ValueError, match="no labelled pairs"):
        BradleyTerryTrainer(RewardModel("observation", (4,))).train(PreferenceDataset())


def test_a_learners_dataset_holds_its_budget_in_no_more_memory_than_that(monkeypatch):
    dataset = PreferenceDataset(max_pairs=100)
    for i in range(100):
        dataset.add(np.full((4,), i), np.full((4,), -i - 1), 1)
    assert len(dataset) == 100 and len(dataset._a) == 100  # grown 64 -> 100, not to 128
    with pytest.raises(ValueError, match="max_pairs=100"):
        dataset.add(np.zeros(4), np.ones(4), 0)
    # A budget whose pairs would not fit in the memory available is refused at the first pair, with the fix.
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=10 * 2**30))
    frames = np.zeros((64, 64, 3), np.uint8), np.ones((64, 64, 3), np.uint8)
    assert PreferenceDataset(max_pairs=20_000).add(*frames, 1)  # RL-VLM-F's budget: 0.5 GB
    with pytest.raises(MemoryError, match=r"need 22\.9 GB and 10\.0 GB are available: lower feedback_budget"):
        PreferenceDataset(max_pairs=1_000_000).add(*frames, 1)
    learner = PreferenceLearner("the goal", OracleLabeler(), config="quick", reward_model=RewardModel("observation", (4,)),
                                reward_input="observation")
    assert learner.dataset.max_pairs == 1000
    learner.close()


@pytest.mark.parametrize("reward_net", ["cnn", "resnet18"])
def test_shared_and_per_member_frame_inputs_agree(reward_net):
    model = RewardModel("frame", (64, 64, 3), reward_net=reward_net, seed=0)
    frames = np.random.default_rng(0).integers(0, 255, size=(5, 64, 64, 3), dtype=np.uint8)
    shared = model.member_rewards(frames)
    per_member = np.repeat(frames[:, None], 3, axis=1)
    with torch.no_grad():
        direct = model.net(model.to_tensor(per_member)).numpy().T
    np.testing.assert_allclose(shared, direct, atol=1e-5)
    assert shared.shape == (3, 5) and not np.allclose(shared[0], shared[1])  # members differ


def test_normalisation_standardises_rewards():
    model = RewardModel("observation", (2,), seed=0)
    x = np.random.default_rng(0).normal(size=(500, 2)).astype(np.float32)
    model.fit_normalization(x)
    rewards = model.predict(x)
    assert abs(rewards.mean()) < 1e-4 and abs(rewards.std() - 1) < 1e-3


@pytest.mark.parametrize("reward_net", ["cnn", "resnet18"])
def test_save_and_load_round_trip(tmp_path, reward_net):
    model = RewardModel("frame", (48, 48, 3), ensemble_size=2, reward_net=reward_net, seed=3)
    frames = np.random.default_rng(0).integers(0, 255, size=(4, 48, 48, 3), dtype=np.uint8)
    model.fit_normalization(frames)
    model.version = 7
    model.save(tmp_path / "reward.pt")
    loaded = RewardModel.load(tmp_path / "reward.pt")
    np.testing.assert_allclose(loaded.predict(frames), model.predict(frames), atol=1e-6)
    assert loaded.version == 7 and loaded.ensemble_size == 2 and loaded.reward_net == reward_net
    with pytest.raises(FileNotFoundError, match="RewardModel.save"):
        RewardModel.load(tmp_path / "missing.pt")


def test_bad_shapes_get_clear_errors():
    with pytest.raises(ValueError, match="at least 48"):
        RewardModel("frame", (32, 32, 3))
    with pytest.raises(ValueError, match="reward_input"):
        RewardModel("pixels", (64, 64, 3))


def test_random_shift_moves_each_frame_by_up_to_pad_pixels_with_edges_repeated():
    frames = torch.rand(2, 3, 3, 16, 16)  # (B, E, C, H, W), as the trainer hands it over
    shifted = random_shift(frames, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == frames.shape
    padded = torch.nn.functional.pad(frames.reshape(6, 3, 16, 16), (2, 2, 2, 2), mode="replicate")
    offsets = []
    for k, image in enumerate(shifted.reshape(6, 3, 16, 16)):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.equal(image, padded[k, :, dy : dy + 16, dx : dx + 16])]
        assert len(found) == 1  # a crop of its own padded frame, channels moved together
        offsets.append(found[0])
    assert len(set(offsets)) > 1  # each frame its own offset
    assert torch.equal(random_shift(frames, 0), frames)


def test_augmentation_is_for_frames():
    with pytest.raises(ValueError, match="augment_shift shifts frames"):
        LearnerConfig(reward_input="observation", augment_shift=4)
    with pytest.raises(ValueError, match="augment_shift shifts frames"):
        BradleyTerryTrainer(RewardModel("observation", (4,)), augment_shift=4)


def test_uncertainty_penalty_pays_less_where_the_members_disagree_off_the_labelled_states():
    # Labelled states vary only in their first coordinate (the true reward); states off them vary in the
    # others, where the members, never taught, disagree. The penalty keeps those from out-earning the best
    # labelled state, which is what a policy over-optimising the reward model would find.
    rng = np.random.default_rng(0)
    labelled = np.zeros((400, 4), np.float32)
    labelled[:, 0] = rng.random(400)
    off = np.zeros((2000, 4), np.float32)
    off[:, 0], off[:, 1:] = rng.random(2000), rng.normal(0, 3, (2000, 3))
    over_rewarded = {}
    for penalty in (0.0, 1.0):
        model = RewardModel("observation", (4,), seed=0, uncertainty_penalty=penalty)
        data = PreferenceDataset()
        for a, b in zip(labelled[::2], labelled[1::2]):
            data.add(a, b, int(b[0] > a[0]))
        trainer = BradleyTerryTrainer(model, epochs=30, seed=0)
        for _ in range(3):
            trainer.train(data)
        rewards = model.fit_normalization(labelled)
        assert np.corrcoef(rewards, labelled[:, 0])[0, 1] > 0.99  # the labelled states ranked as before
        over_rewarded[penalty] = float((model.predict(off) > rewards.max()).mean())
        assert RewardModel.from_state(model.state()).predict(off[:5]) == pytest.approx(model.predict(off[:5]))
    assert over_rewarded[1.0] < over_rewarded[0.0] / 3 and over_rewarded[0.0] > 0.01
