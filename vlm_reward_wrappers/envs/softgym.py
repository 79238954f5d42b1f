"""SoftGym (cloth, rope and liquid on NVIDIA FleX) behind the Gymnasium API.

SoftGym needs NVIDIA FleX with CUDA and gym 0.14, so it installs only on Linux machines with an NVIDIA
GPU, by SoftGym's own instructions (https://github.com/Xingyu-Lin/softgym). Where it imports,
``vlmrw/SoftGym-<Name>-v0`` is registered for each env of ``softgym.registered_env.SOFTGYM_ENVS``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import register, registry

_INSTALL_HINT = (
    "SoftGym is not installed: it needs NVIDIA FleX with CUDA and gym 0.14, so it is not a pip extra; "
    "build it as https://github.com/Xingyu-Lin/softgym explains, or use the CPU tasks vlmrw/ClothFold-v0 "
    "and vlmrw/RopeStraighten-v0"
)


def convert_space(space: Any) -> spaces.Space:
    """The Gymnasium space of an old gym space (Box or Discrete; read by attribute, so gym need not import)."""
    if hasattr(space, "low") and hasattr(space, "high"):
        low, high = np.asarray(space.low), np.asarray(space.high)
        dtype = np.dtype(getattr(space, "dtype", None) or np.float32)
        return spaces.Box(low.astype(dtype), high.astype(dtype), shape=low.shape, dtype=dtype)
    if hasattr(space, "n"):
        return spaces.Discrete(int(space.n))
    raise TypeError(f"cannot convert {space!r} to a Gymnasium space: only Box and Discrete are supported")


def make_softgym(name: str, **env_kwargs: Any) -> Any:
    """A SoftGym env by name, with SoftGym's default arguments (``env_arg_dict``) updated by ``env_kwargs``,
    and actions normalised to [-1, 1] by SoftGym's ``normalize``, as RL-VLM-F made them."""
    try:
        from softgym.registered_env import SOFTGYM_ENVS, env_arg_dict
        from softgym.utils.normalized_env import normalize
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    if name not in SOFTGYM_ENVS:
        raise ValueError(f"no SoftGym env named {name!r} (known: {sorted(SOFTGYM_ENVS)})")
    return normalize(SOFTGYM_ENVS[name](**{**env_arg_dict.get(name, {}), **env_kwargs}))


class SoftGymEnv(gym.Env[np.ndarray, np.ndarray]):
    """A SoftGym env (old gym API) as a Gymnasium env.

    - ``reset(seed=...)`` returns ``(obs, {})``. SoftGym draws the initial state from its cached variations
      with numpy's global generator; here the variation (``config_id``) is drawn from the env's seeded
      ``np_random`` instead, so seeded resets are reproducible. ``options={"config_id": i}`` picks one.
    - ``step`` maps SoftGym's ``(obs, reward, done, info)`` to ``(obs, reward, False, done, info)``: SoftGym's
      ``done`` only says the horizon was reached, which is a truncation, never a termination.
    - ``render()`` calls ``render(mode="rgb_array", **render_kwargs)`` and returns a contiguous
      (H, W, 3) uint8 frame.
    - Spaces are converted to Gymnasium's; observations are cast to the observation space's dtype.

    :param env: a SoftGym env instance, or the name of one (built by :func:`make_softgym` with ``env_kwargs``).
    :param render_mode: "rgb_array" (the default: SoftGym renders every step anyway) or None.
    :param render_kwargs: extra arguments of SoftGym's ``render`` (e.g. ``{"hide_picker": True}``, which
        RL-VLM-F passed to hide the pickers from the VLM).
    :param env_kwargs: SoftGym arguments when ``env`` is a name (e.g. ``observation_mode="key_point"``,
        ``camera_width=256``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(
        self,
        env: Any,
        render_mode: Optional[str] = "rgb_array",
        render_kwargs: Optional[Dict[str, Any]] = None,
        **env_kwargs: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.softgym_env = make_softgym(env, **env_kwargs) if isinstance(env, str) else env
        self.render_mode = render_mode
        self.render_kwargs = dict(render_kwargs or {})
        self.observation_space = convert_space(self.softgym_env.observation_space)
        self.action_space = convert_space(self.softgym_env.action_space)

    def _variation_count(self) -> int:
        configs = getattr(self.softgym_env, "cached_configs", None)
        return len(configs) if configs is not None and not getattr(self.softgym_env, "deterministic", False) else 0

    def _cast(self, obs: Any) -> np.ndarray:
        return np.asarray(obs, dtype=self.observation_space.dtype)

    def reset(
        self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None
    ) -> Tuple[np.ndarray, Dict[str, Any]]:
        super().reset(seed=seed)
        config_id = (options or {}).get("config_id")
        if config_id is None and self._variation_count() > 1:
            config_id = int(self.np_random.integers(self._variation_count()))
        obs = self.softgym_env.reset() if config_id is None else self.softgym_env.reset(config_id=config_id)
        return self._cast(obs), {}

    def step(self, action: np.ndarray) -> Tuple[np.ndarray, float, bool, bool, Dict[str, Any]]:
        obs, reward, done, info = self.softgym_env.step(np.asarray(action, dtype=self.action_space.dtype))
        return self._cast(obs), float(reward), False, bool(done), dict(info or {})

    def render(self) -> Optional[np.ndarray]:
        """The current frame, (H, W, 3) uint8, when ``render_mode == "rgb_array"``."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode: create the env with render_mode='rgb_array'")
            return None
        frame = np.asarray(self.softgym_env.render(mode="rgb_array", **self.render_kwargs))
        return np.ascontiguousarray(frame[..., :3], dtype=np.uint8)

    def close(self) -> None:
        if self.softgym_env is not None:
            self.softgym_env.close()
            self.softgym_env = None


def register_softgym_envs() -> List[str]:
    """Register ``vlmrw/SoftGym-<Name>-v0`` for each SoftGym env, if softgym imports; the ids registered."""
    try:
        from softgym.registered_env import SOFTGYM_ENVS
    except ImportError:
        return []
    ids = []
    for name in SOFTGYM_ENVS:
        env_id = f"vlmrw/SoftGym-{name}-v0"
        if env_id not in registry:
            register(id=env_id, entry_point="vlm_reward_wrappers.envs.softgym:SoftGymEnv", kwargs={"env": name})
        ids.append(env_id)
    return ids
