"""SoftGymEnv against a stand-in that follows SoftGym's interface (SoftGym itself needs FleX with CUDA)."""

import sys
import types

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from vlm_reward_wrappers import OracleLabeler, VLMRewardWrapper
from vlm_reward_wrappers.envs.softgym import SoftGymEnv, register_softgym_envs


class OldBox:
    """gym 0.14's Box as SoftGym builds it: low, high, shape, dtype attributes."""

    def __init__(self, low, high, dtype=np.float32):
        self.low, self.high = np.asarray(low, dtype=dtype), np.asarray(high, dtype=dtype)
        self.shape, self.dtype = self.low.shape, np.dtype(dtype)


class StandInRopeFlatten:
    """SoftGym's FlexEnv interface on a toy rope: two pickers ([dx, dy, dz, pick] each, deltas within 0.01),
    cached initial variations drawn with numpy's global generator, the old gym API, float64 observations,
    a reward that depends on the variation and the picker positions, done at the horizon."""

    def __init__(self, horizon=3, num_variations=5, camera_width=32, camera_height=24, deterministic=False):
        self.horizon, self.deterministic = horizon, deterministic
        self.camera_width, self.camera_height = camera_width, camera_height
        self.cached_configs = [{"segment": 40, "offset": 0.1 * i} for i in range(num_variations)]
        self.action_space = OldBox([-0.01, -0.01, -0.01, 0.0] * 2, [0.01, 0.01, 0.01, 1.0] * 2)
        self.observation_space = OldBox(np.full(12, -np.inf), np.full(12, np.inf))
        self.render_calls, self.closed = [], 0

    def reset(self, config=None, initial_state=None, config_id=None):
        if config_id is None:
            config_id = 0 if self.deterministic else np.random.randint(len(self.cached_configs))
        self.current_config_id, self.time_step = config_id, 0
        self.pickers = np.full((2, 3), self.cached_configs[config_id]["offset"])
        return self._get_obs()

    def _get_obs(self):
        return np.concatenate([self.pickers.ravel(), self.pickers.ravel() * 2])  # float64, as pyflex gives

    def step(self, action):
        action = np.asarray(action).reshape(2, 4)
        self.pickers += action[:, :3]
        self.time_step += 1
        reward = -float(np.abs(self.pickers[0] - self.pickers[1]).sum())
        info = {"performance": reward, "normalized_performance": 1.0 + reward}
        return self._get_obs(), reward, self.time_step >= self.horizon, info

    def render(self, mode="rgb_array", hide_picker=False):
        self.render_calls.append((mode, hide_picker))
        value = int(255 * min(1.0, abs(self.pickers).sum()))
        return np.full((self.camera_height, self.camera_width, 3), value, dtype=np.uint8)[::-1]

    def close(self):
        self.closed += 1


@pytest.fixture
def env():
    env = SoftGymEnv(StandInRopeFlatten(), render_kwargs={"hide_picker": True})
    yield env
    env.close()


def test_spaces_become_gymnasium_spaces(env):
    assert isinstance(env.action_space, gym.spaces.Box) and isinstance(env.observation_space, gym.spaces.Box)
    np.testing.assert_allclose(env.action_space.high, [0.01, 0.01, 0.01, 1.0] * 2)
    assert env.observation_space.shape == (12,) and env.observation_space.dtype == np.float32


def test_reset_and_step_convert_the_old_api(env):
    obs, info = env.reset(seed=0)
    assert info == {} and obs.dtype == np.float32 and obs in env.observation_space
    action = np.array([0.01, 0, 0, 1, -0.01, 0, 0, 1], dtype=np.float32)
    for step in range(3):
        obs, reward, terminated, truncated, info = env.step(action)
        assert isinstance(reward, float) and obs.dtype == np.float32
        assert info["performance"] == reward and not terminated
        # SoftGym's done only marks the horizon: a truncation.
        assert truncated == (step == 2)


def test_seeded_resets_draw_variations_from_the_env_generator(env):
    state = np.random.get_state()[1].copy()
    first = [env.reset(seed=seed)[0] for seed in range(6)]
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # numpy's global generator untouched
    again = [env.reset(seed=seed)[0] for seed in range(6)]
    np.testing.assert_array_equal(first, again)
    assert len({obs[0] for obs in first}) > 1
    obs, _ = env.reset(options={"config_id": 3})
    assert env.softgym_env.current_config_id == 3 and obs[0] == pytest.approx(0.3)


def test_render_returns_contiguous_uint8_frames_with_softgym_arguments(env):
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (24, 32, 3) and frame.dtype == np.uint8 and frame.flags["C_CONTIGUOUS"]
    assert env.softgym_env.render_calls[-1] == ("rgb_array", True)
    with pytest.warns(UserWarning, match="render_mode"):
        assert SoftGymEnv(StandInRopeFlatten(), render_mode=None).render() is None


# SoftGym's key-point spaces are unbounded, and an env made without gym.make has no spec to remake it from.
@pytest.mark.filterwarnings("ignore:.*infinity", "ignore:.*not having a spec")
def test_passes_gymnasium_check_env_and_closes_once(env):
    check_env(env, skip_render_check=False)
    softgym_env = env.softgym_env
    env.close()
    env.close()
    assert softgym_env.closed == 1


def test_works_inside_the_vlm_reward_wrapper(env):
    wrapped = VLMRewardWrapper(env, goal="to straighten the blue rope", labeler=OracleLabeler(), seed=0)
    wrapped.reset(seed=0)
    for _ in range(4):
        _, reward, terminated, truncated, info = wrapped.step(wrapped.action_space.sample())
        assert np.isfinite(reward) and "gt_reward" in info
        if terminated or truncated:
            wrapped.reset()
    wrapped.close()


def test_ids_registered_where_softgym_imports(monkeypatch):
    softgym = types.ModuleType("softgym")
    registered_env = types.ModuleType("softgym.registered_env")
    registered_env.SOFTGYM_ENVS = {"StandInRopeFlatten": StandInRopeFlatten}
    registered_env.env_arg_dict = {"StandInRopeFlatten": {"horizon": 2, "camera_width": 16}}
    normalized_env = types.ModuleType("softgym.utils.normalized_env")
    normalized_env.normalize = lambda env: env
    for name, module in [("softgym", softgym), ("softgym.registered_env", registered_env),
                         ("softgym.utils", types.ModuleType("softgym.utils")),
                         ("softgym.utils.normalized_env", normalized_env)]:
        monkeypatch.setitem(sys.modules, name, module)
    try:
        assert register_softgym_envs() == ["vlmrw/SoftGym-StandInRopeFlatten-v0"]
        env = gym.make("vlmrw/SoftGym-StandInRopeFlatten-v0", render_mode="rgb_array", camera_height=8)
        assert env.render_mode == "rgb_array" and env.unwrapped.softgym_env.horizon == 2
        env.reset(seed=0)
        assert env.render().shape == (8, 16, 3)
        assert env.step(env.action_space.sample())[3] is False and env.step(env.action_space.sample())[3] is True
        env.close()
    finally:
        gym.registry.pop("vlmrw/SoftGym-StandInRopeFlatten-v0", None)


def test_without_softgym_nothing_is_registered_and_making_one_explains(monkeypatch):
    monkeypatch.setitem(sys.modules, "softgym", None)
    assert register_softgym_envs() == []
    with pytest.raises(ImportError, match="FleX with CUDA"):
        SoftGymEnv("ClothFold")
