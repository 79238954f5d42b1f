"""The base of the cloth and rope tasks: a deformable object on a table, moved by pick-and-place."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict, Optional, Tuple, Union

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vlm_reward_wrappers.envs.mujoco_setup import (
    CameraSpec,
    image_shape,
    import_mujoco,
    make_camera,
    make_renderer,
)

#: Table colour (rgb in [0, 1]): light grey, so the coloured cloth and rope stand out in any channel.
TABLE_RGB = (0.78, 0.78, 0.75)
#: Vertical field of view (degrees) of the top camera.
TOP_FOVY = 45.0


class PickAndPlaceEnv(gym.Env[np.ndarray, np.ndarray], ABC):
    """A deformable object lying on a table, changed one pick-and-place at a time.

    One step is one pick-and-place, as in SoftGym's and RL-VLM-F's pick-and-place tasks: an invisible
    mocap picker is connected to the picked point of the object (a ``connect`` equality switched on),
    lifts it by ``lift_height``, carries it to the place position, lowers it to ``release_height``, lets
    go, and the object settles for ``settle_time``. The registered ids truncate episodes at a fixed horizon;
    only the one-step cloth fold (:class:`ClothFoldEnv`) ends its own as terminal.

    Actions are in [-1, 1] and address the square ``[-workspace, workspace]^2`` of the table (metres,
    centred on the table; in the top camera's frames image right is +x and image up is +y). By default an action is
    (pick x, pick y, place x, place y) and the object's point nearest to the pick position in the table
    plane is picked, so every action moves the object.

    The state observation is the x, y, z (m) of the object's key points, float32 of shape (3 * K,).

    Subclasses set ``self.key_points`` (K indices into :meth:`points`) before calling this ``__init__``,
    write the object's MJCF, put it in a random initial shape, say where its points are, and compute the
    true reward.

    :param render_mode: None or "rgb_array".
    :param render_size: rendered frame side in pixels, or (height, width). 360 by default, RL-VLM-F's cloth
        frames: the frame is what a VLM judges (the reward model reads a smaller copy), and at 128 px a
        rope was 4 px thick; rendering 360 px costs 1-2 ms against a 100-180 ms pick-and-place step.
    :param camera: a camera of the scene ("top": straight down from a fixed height, following the object's
        centre of mass so that the object fills most of the frame wherever it is moved; "angled": fixed,
        from the front at 45 degrees), or a free-camera pose dict with keys lookat, distance, azimuth, elevation.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

    #: Simulation step (s): 0.004 s folds the cloth as well as 0.002 s (within 0.01 of normalized
    #: performance) in half the time.
    timestep = 0.004
    #: Half side (m) of the table square that actions address.
    workspace = 0.25
    #: Picker speed (m/s) while carrying: the scripted fold reaches 0.91 of normalized performance at
    #: 1 m/s and 0.95 at 0.5 m/s, which takes twice as long.
    picker_speed = 1.0
    #: Half side (m) of the square of table the top camera shows around the object's centre of mass. The
    #: camera's height is fixed, so an object looks as large in every frame: a crumpled cloth smaller than
    #: a spread one, as the VLM and the reward model must see it (the tasks' goals are shapes, not places).
    view_half_width = 0.22
    #: Height (m) the picked point is lifted above where it was picked.
    lift_height = 0.1
    #: Height (m) above the table where the picker lets go.
    release_height = 0.02
    #: Time (s) the object settles after it is let go.
    settle_time = 0.2
    #: Time (s) it settles after a reset: it starts lying on the table, so contacts only need to form.
    reset_settle_time = 0.05

    def __init__(
        self,
        render_mode: Optional[str] = None,
        render_size: Union[int, Tuple[int, int]] = 360,
        camera: CameraSpec = "top",
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self._mujoco = import_mujoco()
        self.render_mode = render_mode
        self.height, self.width = image_shape(render_size)
        self.model = self._mujoco.MjModel.from_xml_string(self._scene_xml())
        self.data = self._mujoco.MjData(self.model)
        self._camera = make_camera(self.model, camera)
        self._renderer: Optional[Any] = None
        self.action_space = spaces.Box(-1.0, 1.0, shape=(self._action_dim(),), dtype=np.float32)
        # Positions (m) of points on a table 0.7 m wide: within 1 m of its centre unless the simulation fails.
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(3 * len(self.key_points),), dtype=np.float32)

    # ------------------------------------------------------------------ what subclasses provide

    @abstractmethod
    def _object_xml(self) -> str:
        """MJCF of the object, placed inside ``<worldbody>``."""

    def _extension_xml(self) -> str:
        """MJCF placed at the top of the model (plugins the object needs)."""
        return ""

    @abstractmethod
    def _reset_object(self, rng: np.random.Generator) -> None:
        """Set ``self.data.qpos`` to a random initial shape of the object (drawn from ``rng`` only)."""

    @abstractmethod
    def points(self) -> np.ndarray:
        """(P, 3) world positions (m) of the object's points, the ones that can be picked."""

    @abstractmethod
    def _grasp_point(self, index: int) -> Tuple[int, np.ndarray]:
        """Body id of point ``index`` and the point's position (3,) in that body's frame."""

    @abstractmethod
    def _evaluate(self) -> Tuple[float, Dict[str, Any]]:
        """True reward of the current state and the info dict."""

    def _begin_episode(self) -> None:
        """Called once the object has settled after a reset (e.g. to remember initial positions)."""

    def _action_dim(self) -> int:
        return 4

    def _decode_action(self, action: np.ndarray) -> Tuple[int, np.ndarray]:
        """The index of the point to pick and the place position (2,) in metres, from a clipped action."""
        pick, place = action[:2] * self.workspace, action[2:4] * self.workspace
        return self.nearest_point(pick), place

    # ------------------------------------------------------------------ Gymnasium API

    def reset(
        self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None
    ) -> Tuple[np.ndarray, Dict[str, Any]]:
        super().reset(seed=seed)
        self._mujoco.mj_resetData(self.model, self.data)
        self._reset_object(self.np_random)
        self._mujoco.mj_forward(self.model, self.data)
        self._settle(self.reset_settle_time)
        self._begin_episode()
        return self._observation(), self._evaluate()[1]

    def step(self, action: np.ndarray) -> Tuple[np.ndarray, float, bool, bool, Dict[str, Any]]:
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(self.action_space.shape), -1.0, 1.0)
        index, place = self._decode_action(action)
        self.pick_and_place(index, place)
        reward, info = self._evaluate()
        return self._observation(), reward, False, False, info

    def render(self) -> Optional[np.ndarray]:
        """The current frame, (height, width, 3) uint8, when ``render_mode == "rgb_array"``."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode: create the env with render_mode='rgb_array'")
            return None
        if self._renderer is None:
            self._renderer = make_renderer(self.model, self.height, self.width)
        self._renderer.update_scene(self.data, camera=self._camera)
        self._draw_table_beyond(self._renderer.scene)
        return self._renderer.render()

    def _draw_table_beyond(self, scene: Any) -> None:
        """Draw the table on past its edge, where the top camera looks once it follows the object there. A
        geom drawn into the scene, not one in the model: a model geom, even without contacts, changes the
        simulation's numbers."""
        if scene.ngeom < scene.maxgeom:
            self._mujoco.mjv_initGeom(scene.geoms[scene.ngeom], type=self._mujoco.mjtGeom.mjGEOM_BOX,
                                      size=np.array([2.0, 2.0, 0.001]), pos=np.array([0.0, 0.0, -0.002]),
                                      mat=np.eye(3).ravel(), rgba=np.array([*TABLE_RGB, 1.0], dtype=np.float32))
            scene.ngeom += 1

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def _observation(self) -> np.ndarray:
        return self.points()[self.key_points].astype(np.float32).ravel()

    # ------------------------------------------------------------------ the primitive

    def nearest_point(self, xy: np.ndarray) -> int:
        """Index of the object's point nearest to ``xy`` (m) in the table plane."""
        return int(np.argmin(np.linalg.norm(self.points()[:, :2] - xy, axis=1)))

    def pick_and_place(self, index: int, place: np.ndarray) -> None:
        """Pick point ``index``, carry it over ``place`` (x, y in m), let it go there and let the object settle."""
        body, anchor = self._grasp_point(index)
        start = self.points()[index]
        self.data.mocap_pos[0] = start
        self.model.eq_obj2id[0] = body
        self.model.eq_data[0, 3:6] = anchor
        self.data.eq_active[0] = 1
        top = start[2] + self.lift_height
        for x, y, z in ((*start[:2], top), (*place, top), (*place, self.release_height)):
            self._move_picker(np.array([x, y, z], dtype=np.float64))
        self.data.eq_active[0] = 0
        self._settle(self.settle_time)

    def _move_picker(self, target: np.ndarray) -> None:
        start = self.data.mocap_pos[0].copy()
        n = max(1, int(np.ceil(np.linalg.norm(target - start) / (self.picker_speed * self.timestep))))
        for fraction in np.arange(1, n + 1) / n:
            self.data.mocap_pos[0] = start + fraction * (target - start)
            self._mujoco.mj_step(self.model, self.data)

    def _settle(self, seconds: float) -> None:
        self._mujoco.mj_step(self.model, self.data, nstep=max(1, int(round(seconds / self.timestep))))

    # ------------------------------------------------------------------ the scene

    def _scene_xml(self) -> str:
        half = self.workspace + 0.1
        table = " ".join(str(c) for c in TABLE_RGB)
        return f"""
<mujoco model="{type(self).__name__}">
  {self._extension_xml()}
  <option timestep="{self.timestep}" solver="CG" tolerance="1e-6" integrator="implicitfast"/>
  <visual>
    <quality shadowsize="0" offsamples="0" numslices="12" numstacks="6"/>
    <global offwidth="{self.width}" offheight="{self.height}"/>
    <headlight ambient=".45 .45 .45" diffuse=".45 .45 .45" specular="0 0 0"/>
  </visual>
  <worldbody>
    <light directional="true" pos="0 0 2" dir="0 0 -1" castshadow="false" diffuse=".3 .3 .3" specular="0 0 0"/>
    <camera name="top" mode="trackcom" pos="0 0 {self.view_half_width / np.tan(np.radians(TOP_FOVY / 2)):.3f}"
            fovy="{TOP_FOVY}" xyaxes="1 0 0 0 1 0"/>
    <camera name="angled" pos="0 {-self.workspace * 2.4:.3f} {self.workspace * 2.4:.3f}" xyaxes="1 0 0 0 .7071 .7071"/>
    <geom name="table" type="box" size="{half} {half} .02" pos="0 0 -.02" rgba="{table} 1" friction="1 .005 .0001"/>
    <body name="picker" mocap="true" pos="0 0 .5"/>
    {self._object_xml()}
  </worldbody>
  <equality>
    <connect name="grip" body1="picker" anchor="0 0 0" active="false"/>
  </equality>
</mujoco>"""
