"""Cloth on a table (a MuJoCo flexcomp grid): RL-VLM-F's diagonal fold, and SoftGym's true rewards."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from vlm_reward_wrappers.envs.pick_place import PickAndPlaceEnv


class ClothEnv(PickAndPlaceEnv):
    """A square cloth lying flat on the table: a grid of ``grid_size`` x ``grid_size`` vertices.

    Vertex ``ix * grid_size + iy`` starts at (x, y) = (ix, iy) * spacing from the cloth's first corner,
    before a random rotation and shift. Seen from the top camera, vertex ``grid_size - 1`` (ix = 0,
    iy = max) is the top-left corner and vertex ``(grid_size - 1) * grid_size`` the bottom-right one.
    The edges are inextensible (equality-constrained), the cloth bends freely, and its layers pass through
    each other when folded: self-collision made a fold 40% slower (11 x 11) and changes the true reward by
    about the cloth's thickness.

    Observation (27,): x, y, z (m) of 9 key points: the 4 corners, the 4 edge midpoints and the centre,
    row by row from (ix, iy) = (0, 0).

    :param grid_size: vertices per side (9 to 15 keep it fast: the simulation cost grows with its square).
    :param max_rotation: the initial cloth is turned by a uniform angle in +-max_rotation (radians).
    :param max_shift: and shifted by a uniform offset in +-max_shift (m) along x and y.
    :param kwargs: :class:`PickAndPlaceEnv`'s (render_mode, render_size, camera).
    """

    #: Side (m) of the square cloth.
    side = 0.3
    #: Cloth colour (rgb in [0, 1]): a strong orange, far from the grey table.
    rgb = (0.9, 0.35, 0.12)

    def __init__(
        self, grid_size: int = 11, max_rotation: float = np.pi / 12, max_shift: float = 0.03, **kwargs: Any
    ) -> None:
        if grid_size < 3:
            raise ValueError(f"grid_size must be at least 3, got {grid_size}")
        self.grid_size = grid_size
        self.max_rotation = max_rotation
        self.max_shift = max_shift
        n, mid = grid_size, grid_size // 2
        self.key_points = np.array([ix * n + iy for ix in (0, mid, n - 1) for iy in (0, mid, n - 1)])
        super().__init__(**kwargs)
        self._vertex_bodies = self.model.flex_vertbodyid.copy()
        # Each vertex body has three slide joints (x, y, z) whose qpos is the offset from where it was built.
        self._vertex_qpos = self.model.jnt_qposadr[self.model.body_jntadr[self._vertex_bodies]]

    @property
    def spacing(self) -> float:
        """Distance (m) between neighbouring vertices."""
        return self.side / (self.grid_size - 1)

    def _object_xml(self) -> str:
        n, s = self.grid_size, self.spacing
        rgb = " ".join(str(c) for c in self.rgb)
        return f"""
    <flexcomp name="cloth" type="grid" dim="2" count="{n} {n} 1" spacing="{s} {s} {s}" pos="0 0 .004"
              radius=".003" rgba="{rgb} 1" mass=".1">
      <edge equality="true" damping=".001"/>
      <contact selfcollide="none" condim="3" solref=".01 1" friction=".8"/>
    </flexcomp>"""

    def flat_grid(self) -> np.ndarray:
        """(P, 3) positions (m) of the vertices of the cloth lying flat, centred on the origin."""
        n = self.grid_size
        ix, iy = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        xy = (np.stack([ix.ravel(), iy.ravel()], axis=1) - (n - 1) / 2) * self.spacing
        return np.concatenate([xy, np.full((n * n, 1), 0.004)], axis=1)

    def _reset_object(self, rng: np.random.Generator) -> None:
        angle = rng.uniform(-self.max_rotation, self.max_rotation)
        shift = rng.uniform(-self.max_shift, self.max_shift, size=2)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        target = self.flat_grid()
        target[:, :2] = target[:, :2] @ rotation.T + shift
        self._set_vertices(target)

    def _set_vertices(self, positions: np.ndarray) -> None:
        offsets = positions - self.model.body_pos[self._vertex_bodies]
        for axis in range(3):
            self.data.qpos[self._vertex_qpos + axis] = offsets[:, axis]

    def points(self) -> np.ndarray:
        return self.data.flexvert_xpos.copy()

    def _grasp_point(self, index: int) -> Tuple[int, np.ndarray]:
        return int(self._vertex_bodies[index]), np.zeros(3)


class ClothFoldEnv(ClothEnv):
    """Fold the cloth diagonally, from the top-left corner onto the bottom-right corner (RL-VLM-F's task).

    One-step (default, RL-VLM-F's): the picker holds the top-left corner and the action (2,) in [-1, 1]
    is where to put it, scaled to ``[-workspace, workspace]`` m on the table; that step ends the episode as
    terminal: the fold is done, so an agent learns its reward alone instead of bootstrapping from a next fold
    that never comes (SoftGym's episode ends, as RL-VLM-F's training read them). Multi-step
    (``multi_step=True``, ``vlmrw/ClothFoldMultiStep-v0``): each action (4,) is a pick-and-place anywhere on
    the cloth, and the registered id truncates episodes at 3 steps.

    True reward, SoftGym's ClothFold with the diagonal as fold line: the vertices are split into the half
    above the diagonal through the bottom-left and top-right corners (group a, which moves) and its mirror
    image (group b, which should stay)::

        reward = -(mean |p_a - p_b| + 1.2 * mean |p_b - p_b(reset)|)    (m)

    ``info`` holds ``performance`` (= reward), ``normalized_performance`` = (performance - performance at
    reset) / (0 - performance at reset) (SoftGym's: 0 at reset, 1 perfectly folded), ``neg_group_dist``,
    ``neg_fixation_dist`` and ``success`` (normalized performance of at least ``success_threshold``).

    :param multi_step: pick-and-place anywhere instead of placing the held corner.
    :param success_threshold: normalized performance that counts as folded.
    :param terminal: whether the one-step fold ends its episode as terminal; False leaves the end to the
        registered TimeLimit, a truncation from which off-policy agents bootstrap.
    :param kwargs: :class:`ClothEnv`'s (grid_size, max_rotation, max_shift, render_mode, render_size, camera).
    """

    def __init__(self, multi_step: bool = False, success_threshold: float = 0.8, terminal: bool = True,
                 **kwargs: Any) -> None:
        self.multi_step = multi_step
        self.success_threshold = success_threshold
        self.terminal = terminal and not multi_step
        super().__init__(**kwargs)
        n = self.grid_size
        ix, iy = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        above = iy > ix
        self.group_a = (ix * n + iy)[above]
        self.group_b = (iy * n + ix)[above]
        #: The corner the one-step picker holds: top-left in the top camera's frame.
        self.held_corner = n - 1
        self._initial_b = np.zeros((len(self.group_b), 3))
        self._performance_init = -1.0

    def _action_dim(self) -> int:
        return 4 if self.multi_step else 2

    def step(self, action: np.ndarray) -> Tuple[np.ndarray, float, bool, bool, Dict[str, Any]]:
        observation, reward, _, truncated, info = super().step(action)
        return observation, reward, self.terminal, truncated, info

    def _decode_action(self, action: np.ndarray) -> Tuple[int, np.ndarray]:
        if self.multi_step:
            return super()._decode_action(action)
        return self.held_corner, action * self.workspace

    def _begin_episode(self) -> None:
        self._initial_b = self.points()[self.group_b]
        self._performance_init = self._distances()[0]

    def _distances(self) -> Tuple[float, float, float]:
        points = self.points()
        group = float(np.linalg.norm(points[self.group_a] - points[self.group_b], axis=1).mean())
        fixation = float(np.linalg.norm(points[self.group_b] - self._initial_b, axis=1).mean())
        return -(group + 1.2 * fixation), group, fixation

    def _evaluate(self) -> Tuple[float, Dict[str, Any]]:
        performance, group, fixation = self._distances()
        normalized = (performance - self._performance_init) / (0.0 - self._performance_init)
        info = {
            "performance": performance,
            "normalized_performance": normalized,
            "neg_group_dist": -group,
            "neg_fixation_dist": -fixation,
            "success": bool(normalized >= self.success_threshold),
        }
        return performance, info


class ClothFlattenEnv(ClothEnv):
    """Spread a crumpled cloth flat (SoftGym's ClothFlatten), one pick-and-place (4,) at a time.

    Each reset lays the cloth flat (randomly turned and shifted) and crumples it with ``crumple_moves``
    random pick-and-places of random vertices to random places near the centre.

    True reward, SoftGym's ClothFlatten: the area (m^2) of the table the cloth covers, counted on a grid of
    cells a quarter spacing wide, each vertex covering the square one spacing wide around it (so the flat
    cloth covers ``(side + spacing)^2``). ``info`` holds ``performance`` (= reward),
    ``normalized_performance`` = (area - area at reset) / (flat area - area at reset) (SoftGym's),
    ``covered_fraction`` (area / flat area) and ``success`` (at least ``success_fraction`` of the flat
    area covered).

    :param crumple_moves: random pick-and-places that crumple the cloth at reset.
    :param success_fraction: covered fraction of the flat area that counts as flat.
    :param kwargs: :class:`ClothEnv`'s (grid_size, max_rotation, max_shift, render_mode, render_size, camera).
    """

    #: Half side (m) of the square around the centre where crumpling moves put the picked vertex.
    crumple_spread = 0.08

    def __init__(self, crumple_moves: int = 2, success_fraction: float = 0.9, **kwargs: Any) -> None:
        self.crumple_moves = crumple_moves
        self.success_fraction = success_fraction
        super().__init__(**kwargs)
        self.flat_area = self.covered_area(self.flat_grid())
        self._area_init = 0.0

    def covered_area(self, points: np.ndarray) -> float:
        """Area (m^2) of the table covered by vertices at ``points`` (P, 3), each covering one spacing squared."""
        cell = self.spacing / 4
        size = int(np.ceil(2 * (self.workspace + self.side) / cell))
        corner = np.floor((points[:, :2] + self.workspace + self.side - self.spacing / 2) / cell).astype(int)
        offsets = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), axis=-1).reshape(-1, 2)
        cells = np.clip((corner[:, None, :] + offsets[None]).reshape(-1, 2), 0, size - 1)
        grid = np.zeros((size, size), dtype=bool)
        grid[cells[:, 0], cells[:, 1]] = True
        return float(grid.sum() * cell**2)

    def _reset_object(self, rng: np.random.Generator) -> None:
        super()._reset_object(rng)
        self._mujoco.mj_forward(self.model, self.data)
        for _ in range(self.crumple_moves):
            index = int(rng.integers(self.grid_size**2))
            self.pick_and_place(index, rng.uniform(-self.crumple_spread, self.crumple_spread, size=2))

    def _begin_episode(self) -> None:
        self._area_init = self.covered_area(self.points())

    def _evaluate(self) -> Tuple[float, Dict[str, Any]]:
        area = self.covered_area(self.points())
        info = {
            "performance": area,
            "normalized_performance": (area - self._area_init) / (self.flat_area - self._area_init),
            "covered_fraction": area / self.flat_area,
            "success": bool(area >= self.success_fraction * self.flat_area),
        }
        return area, info
