"""A rope lying curved on a table (a MuJoCo cable), to be straightened: SoftGym's RopeFlatten reward."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from vlm_reward_wrappers.envs.pick_place import PickAndPlaceEnv


class RopeStraightenEnv(PickAndPlaceEnv):
    """Straighten a blue rope that starts in a random curve (RL-VLM-F's rope task, "to straighten the blue rope").

    The rope is a MuJoCo cable composite with the ``mujoco.elasticity.cable`` plugin: ``segments`` rigid
    capsules joined by ball joints, inextensible, with a little bending and twisting stiffness, and table
    friction that keeps the shape it is given. Its ``segments + 1`` points are the joints between capsules
    and its two ends. Each action (4,) in [-1, 1] is a pick-and-place (see :class:`PickAndPlaceEnv`).

    True reward, SoftGym's RopeFlatten: ``-|end-to-end distance - length|`` (m), 0 when straight.
    ``info`` holds ``performance`` (= reward), ``normalized_performance`` = (performance + length) / length
    (SoftGym's: 1 when straight), ``end_point_distance`` (m) and ``success`` (the ends at least 95% of the
    length apart, RL-VLM-F's threshold).

    Observation (30,): x, y, z (m) of 10 key points evenly spaced along the rope, from end to end.

    :param segments: capsules in the rope.
    :param max_end_ratio: initial shapes are drawn until the ends are closer than this fraction of the length.
    :param kwargs: :class:`PickAndPlaceEnv`'s (render_mode, render_size, camera).
    """

    #: Rope length (m) and radius (m).
    length = 0.4
    radius = 0.01
    #: Rope colour (rgb in [0, 1]): blue, as in the goal.
    rgb = (0.1, 0.25, 0.85)
    lift_height = 0.05
    #: Largest curvature (1/m) of a random initial shape, at each of 4 control points along the rope.
    max_curvature = 14.0

    def __init__(self, segments: int = 24, max_end_ratio: float = 0.7, **kwargs: Any) -> None:
        if segments < 4:
            raise ValueError(f"segments must be at least 4, got {segments}")
        self.segments = segments
        self.max_end_ratio = max_end_ratio
        self.key_points = np.round(np.linspace(0, segments, 10)).astype(int)
        super().__init__(**kwargs)
        mujoco = self._mujoco
        first = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "ropeB_first")
        self._bodies = np.arange(first, first + segments)
        self._end_site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, "ropeS_last")

    @property
    def segment_length(self) -> float:
        """Length (m) of one capsule."""
        return self.length / self.segments

    def _extension_xml(self) -> str:
        return '<extension><plugin plugin="mujoco.elasticity.cable"/></extension>'

    def _object_xml(self) -> str:
        rgb = " ".join(str(c) for c in self.rgb)
        return f"""
    <composite prefix="rope" type="cable" curve="s" count="{self.segments + 1} 1 1" size="{self.length}"
               offset="{-self.length / 2} 0 {self.radius}" initial="free">
      <plugin plugin="mujoco.elasticity.cable">
        <config key="twist" value="1e4"/>
        <config key="bend" value="1e4"/>
        <config key="vmax" value="0"/>
      </plugin>
      <joint kind="main" damping=".001"/>
      <geom type="capsule" size="{self.radius}" rgba="{rgb} 1" condim="3" mass=".002" friction="1 .005 .0001"/>
    </composite>"""

    def _random_headings(self, rng: np.random.Generator) -> np.ndarray:
        """Heading (rad) of each capsule of a random planar curve: its curvature (1/m) is interpolated between
        4 random control points, redrawn until the ends are close enough and the rope does not cross itself."""
        n = self.segments
        along = np.arange(n) / (n - 1)
        indices = np.arange(n + 1)
        apart = np.abs(indices[:, None] - indices[None, :]) > 2
        while True:
            controls = rng.uniform(-self.max_curvature, self.max_curvature, 4)
            curvature = np.interp(along, np.linspace(0, 1, 4), controls)
            turns = np.cumsum(curvature[1:] * self.segment_length)
            headings = rng.uniform(-np.pi, np.pi) + np.concatenate([[0.0], turns])
            points = self._polyline(headings)
            gaps = np.linalg.norm(points[:, None] - points[None, :], axis=2)[apart]
            ends = np.linalg.norm(points[-1] - points[0])
            if ends < self.max_end_ratio * self.length and gaps.min() > 3 * self.radius:
                return headings

    def _polyline(self, headings: np.ndarray) -> np.ndarray:
        """(segments + 1, 2) points (m) of the curve with these capsule headings, centred on the origin."""
        steps = self.segment_length * np.stack([np.cos(headings), np.sin(headings)], axis=1)
        points = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
        return points - points.mean(axis=0)

    def _reset_object(self, rng: np.random.Generator) -> None:
        headings = self._random_headings(rng)
        start = self._polyline(headings)[0]
        qpos = self.data.qpos
        # The first capsule has a free joint (position, quaternion); each next one a ball joint whose
        # quaternion turns it about z by the change of heading.
        qpos[0:3] = start[0], start[1], self.radius
        qpos[3:7] = np.cos(headings[0] / 2), 0.0, 0.0, np.sin(headings[0] / 2)
        turns = np.diff(headings)
        balls = qpos[7:].reshape(self.segments - 1, 4)
        balls[:] = 0.0
        balls[:, 0], balls[:, 3] = np.cos(turns / 2), np.sin(turns / 2)

    def points(self) -> np.ndarray:
        return np.concatenate([self.data.xpos[self._bodies], self.data.site_xpos[self._end_site][None]])

    def _grasp_point(self, index: int) -> Tuple[int, np.ndarray]:
        if index == self.segments:
            return int(self._bodies[-1]), np.array([self.segment_length, 0.0, 0.0])
        return int(self._bodies[index]), np.zeros(3)

    def _evaluate(self) -> Tuple[float, Dict[str, Any]]:
        points = self.points()
        distance = float(np.linalg.norm(points[-1] - points[0]))
        performance = -abs(distance - self.length)
        info = {
            "performance": performance,
            "normalized_performance": (performance + self.length) / self.length,
            "end_point_distance": distance,
            "success": bool(distance >= 0.95 * self.length),
        }
        return performance, info
