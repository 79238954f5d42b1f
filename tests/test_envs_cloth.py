"""Cloth tasks: SoftGym's true rewards, a scripted fold and flatten beat random actions, the cloth is in frame."""

import gymnasium as gym
import numpy as np
import pytest

from vlm_reward_wrappers.envs.cloth import ClothFlattenEnv, ClothFoldEnv
from vlm_reward_wrappers.envs.scripted import flatten_cloth, fold_cloth

SEEDS = range(4)


def cloth_pixels(frame: np.ndarray) -> np.ndarray:
    """Mask of the orange cloth's pixels (the table is grey: its red and blue channels are alike)."""
    frame = frame.astype(int)
    return frame[..., 0] - frame[..., 2] > 80


def run(env, actions) -> dict:
    """The info of the last step of ``actions``."""
    for action in actions:
        info = env.step(action)[4]
    return info


@pytest.fixture
def fold():
    env = ClothFoldEnv(render_mode="rgb_array", render_size=96)
    yield env
    env.close()


def test_reward_is_softgym_clothfold(fold):
    _, info = fold.reset(seed=0)
    assert info["normalized_performance"] == 0.0 and info["performance"] < -0.1
    points = fold.points()
    # Moving the whole cloth by d leaves the halves' distance as it was and adds 1.2 d of fixation penalty.
    fold._set_vertices(points + [0.05, 0.0, 0.0])
    fold._mujoco.mj_forward(fold.model, fold.data)
    reward, moved = fold._evaluate()
    assert moved["neg_fixation_dist"] == pytest.approx(-0.05, abs=1e-6)
    assert reward == pytest.approx(info["performance"] - 1.2 * 0.05, abs=1e-6)
    # Folded exactly onto the fixed half: reward 0, normalized performance 1.
    points[fold.group_a] = points[fold.group_b]
    fold._set_vertices(points)
    fold._mujoco.mj_forward(fold.model, fold.data)
    reward, folded = fold._evaluate()
    assert reward == pytest.approx(0.0, abs=1e-6) and folded["normalized_performance"] == pytest.approx(1.0)
    assert folded["success"]


def test_scripted_one_step_fold_beats_random_places(fold):
    scripted, random = [], []
    for seed in SEEDS:
        fold.reset(seed=seed)
        scripted.append(run(fold, fold_cloth(fold))["normalized_performance"])
        fold.reset(seed=seed)
        fold.action_space.seed(seed)
        random.append(run(fold, [fold.action_space.sample()])["normalized_performance"])
    assert min(scripted) > 0.85 and np.mean(random) < 0.4
    assert min(scripted) > max(random)


def test_multi_step_fold_picks_anywhere():
    env = gym.make("vlmrw/ClothFoldMultiStep-v0")
    env.reset(seed=0)
    (action,) = fold_cloth(env)
    assert action.shape == (4,)
    _, _, terminated, truncated, info = env.step(action)
    assert info["success"] and info["normalized_performance"] > 0.85 and not (terminated or truncated)
    env.close()


def test_frames_show_the_cloth_and_its_fold(fold):
    fold.reset(seed=0)
    flat = cloth_pixels(fold.render())
    run(fold, fold_cloth(fold))
    folded = cloth_pixels(fold.render())
    # The flat cloth covers about half the frame of the camera that follows it, the folded one half of that.
    assert 0.3 < flat.mean() < 0.7 and 0.3 < folded.mean() / flat.mean() < 0.7
    # Folded onto its bottom-right corner, it is a triangle filling the bottom-right half of its bounding box.
    rows, cols = np.nonzero(folded)
    assert rows.mean() > (rows.min() + rows.max()) / 2 and cols.mean() > (cols.min() + cols.max()) / 2


def test_scripted_flatten_beats_random_moves():
    env = ClothFlattenEnv()
    scripted, random = [], []
    for seed in SEEDS[:2]:
        _, info = env.reset(seed=seed)
        assert info["covered_fraction"] < 0.8 and info["performance"] < env.flat_area
        scripted.append(run(env, flatten_cloth(env))["covered_fraction"])
        env.reset(seed=seed)
        env.action_space.seed(seed)
        random.append(run(env, [env.action_space.sample() for _ in range(4)])["covered_fraction"])
    assert min(scripted) > 0.85 and min(scripted) > max(random) + 0.3
    env.close()


def _span(mask: np.ndarray) -> float:
    """The object's extent: the longer side of its pixels' bounding box, as a fraction of the frame's side."""
    ys, xs = np.nonzero(mask)
    return max(np.ptp(xs) + 1, np.ptp(ys) + 1) / max(mask.shape)


@pytest.mark.parametrize("env_cls, script, start_share, goal_share", [
    (ClothFoldEnv, fold_cloth, 0.4, 0.18),  # measured: 0.478 spread, 0.226-0.230 folded (seeds 0-3)
    (ClothFlattenEnv, flatten_cloth, 0.15, 0.25),  # 0.181-0.312 crumpled, 0.307-0.468 flattened
])
def test_the_default_frame_shows_the_cloth_large_at_its_start_and_its_goal(env_cls, script, start_share, goal_share):
    env = env_cls(render_mode="rgb_array")
    for seed in range(2):
        env.reset(seed=seed)
        start = cloth_pixels(env.render())
        run(env, script(env))
        goal = cloth_pixels(env.render())
        assert start.shape == (360, 360) and start.mean() > start_share and goal.mean() > goal_share
        assert _span(start) > 0.55 and _span(goal) > 0.6  # measured 0.58-0.84
    env.close()


def test_the_camera_follows_the_cloth_wherever_it_is_carried():
    env = ClothFoldEnv(render_mode="rgb_array")
    env.reset(seed=0)
    table = env.render()[0, 0]
    # The cloth's middle carried to a corner of the square actions address, where it lies in a heap.
    centre = env.points()[:, :2].mean(axis=0)
    env.pick_and_place(env.nearest_point(centre), np.array([env.workspace, env.workspace]))
    assert np.linalg.norm(env.points()[:, :2].mean(axis=0) - centre) > 0.2
    frame = env.render()
    rows, cols = np.nonzero(cloth_pixels(frame))
    assert abs(rows.mean() / 360 - 0.5) < 0.1 and abs(cols.mean() / 360 - 0.5) < 0.1  # in the middle
    # The table goes on past its edge: no black background where the camera looks beyond it.
    assert (frame[cloth_pixels(frame) == 0] == table).all(axis=-1).mean() > 0.99
    env.close()


def test_one_step_fold_ends_as_terminal():
    # Off-policy agents would otherwise bootstrap from the folded cloth as if another fold followed.
    env = gym.make("vlmrw/ClothFold-v0")
    env.reset(seed=0)
    terminated = env.step(env.action_space.sample())[2]
    env.close()
    truncating = gym.make("vlmrw/ClothFold-v0", terminal=False)
    truncating.reset(seed=0)
    _, _, kept_going, truncated, _ = truncating.step(truncating.action_space.sample())
    truncating.close()
    assert terminated and not kept_going and truncated
