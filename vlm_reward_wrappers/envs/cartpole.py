"""RL-VLM-F's CartPole: continuous force, no early termination, true reward -|pole angle|."""

from __future__ import annotations

from typing import Optional

import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class AngleCartPoleEnv(CartPoleEnv):
    """CartPole whose true reward measures the goal, so preferences between frames are informative.

    Gymnasium's CartPole-v1 pays +1 every step: a teacher comparing frames sees only ties. Here, as in
    RL-VLM-F, the action is a force in [-1, 1] (times ``force_mag``), episodes never terminate early
    (the registered id truncates them at 100 steps), the pole may fall and swing freely, the cart stops
    at the edges of the track so it stays in view, and the reward is -|pole angle| in radians (0 when
    upright, -pi hanging down).
    """

    def __init__(self, render_mode: Optional[str] = None) -> None:
        super().__init__(render_mode=render_mode)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        big = np.finfo(np.float32).max
        high = np.array([self.x_threshold, big, np.pi, big], dtype=np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)

    def step(self, action):
        force = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0)) * self.force_mag
        x, x_dot, theta, theta_dot = self.state
        costheta, sintheta = np.cos(theta), np.sin(theta)
        temp = (force + self.polemass_length * np.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * np.square(costheta) / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        x, x_dot = x + self.tau * x_dot, x_dot + self.tau * xacc
        theta, theta_dot = theta + self.tau * theta_dot, theta_dot + self.tau * thetaacc
        if abs(x) > self.x_threshold:
            x, x_dot = float(np.clip(x, -self.x_threshold, self.x_threshold)), 0.0
        theta = (theta + np.pi) % (2 * np.pi) - np.pi
        self.state = np.array([x, x_dot, theta, theta_dot], dtype=np.float64)
        if self.render_mode == "human":
            self.render()
        return self.state.astype(np.float32), -abs(float(theta)), False, False, {}
