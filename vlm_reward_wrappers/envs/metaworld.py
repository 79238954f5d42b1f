"""MetaWorld tasks rendered the way RL-VLM-F framed them: its cameras and crops, right side up, no robot."""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple, Union

import gymnasium as gym
import numpy as np

from vlm_reward_wrappers.envs.mujoco_setup import (
    CameraSpec,
    image_shape,
    import_mujoco,
    make_camera,
    make_renderer,
    select_mujoco_gl,
)

#: RL-VLM-F's camera of each task (MJCF attributes of its metaworld fork's xyz_base.xml, angles in
#: radians), and whether it cropped the frame: it rendered 480 x 480 and kept rows and columns 100:400.
RLVLMF_CAMERAS: Dict[str, Tuple[str, bool]] = {
    "sweep-into": ('pos="0 1.1 .75" euler="-.5 0 0" fovy="45"', True),
    "drawer-open": ('pos="-.6 .2 .35" xyaxes="-1 1 0 -.2 -.2 -1" fovy="45"', True),
    "soccer": ('pos=".2 .6 .5" euler="3.5 2.7 1" fovy="45"', False),
}
#: Tasks RL-VLM-F did not run, registered here too (``vlmrw/MetaWorld-<task>-v0``), with their default
#: camera: a task RL-VLM-F framed the same scene of, or a free camera on the object (MetaWorld's corner
#: camera showed the button and the window in 4% of the frame; these, in 19-34%, tested).
OTHER_TASK_CAMERAS: Dict[str, CameraSpec] = {
    "drawer-close": "drawer-open",  # drawer-open's scene
    "button-press-topdown": dict(lookat=(-0.08, 0.86, 0.31), distance=0.45, azimuth=135.0, elevation=-35.0),
    "window-open": dict(lookat=(-0.12, 0.72, 0.16), distance=0.6, azimuth=90.0, elevation=-35.0),
}
_CROP_FRACTION = 300 / 480
#: RL-VLM-F recoloured the sweep-into block green ("the green cube" of its goal).
_GREEN_RGBA = (0.15, 0.65, 0.2, 1.0)
#: Geom group the hidden robot is moved to; the renderer's scene option leaves it out.
_HIDDEN_GROUP = 5


def metaworld_task_name(task: str) -> str:
    """MetaWorld's name of a task given with or without its version: "drawer-open" -> "drawer-open-v3"."""
    return task if re.search(r"-v\d+$", task) else f"{task}-v3"


def rlvlmf_camera(task: str) -> Tuple[Dict[str, Any], float]:
    """RL-VLM-F's camera of ``task`` as a free camera (right side up) and its vertical field of view (degrees).

    The pose is RL-VLM-F's; its crop becomes a narrower field of view, so frames of any size show what its
    cropped 300 x 300 frames showed, without rendering pixels only to throw them away. A free camera has no
    roll: RL-VLM-F's cameras looked at the scene upside down and it flipped the rows of each frame, which
    left the scene mirrored left to right; these frames show it unmirrored.

    :param task: "sweep-into", "drawer-open" or "soccer" (with or without "-v3").
    """
    mujoco = import_mujoco()
    name = metaworld_task_name(task).rsplit("-", 1)[0]
    if name not in RLVLMF_CAMERAS:
        raise ValueError(f"RL-VLM-F framed only {sorted(RLVLMF_CAMERAS)}; pass camera=... for {task!r}")
    attributes, crop = RLVLMF_CAMERAS[name]
    # Let MuJoCo's compiler turn the MJCF orientation into a rotation, rather than re-deriving its Euler rules.
    model = mujoco.MjModel.from_xml_string(
        f'<mujoco><compiler angle="radian"/><worldbody><camera name="c" {attributes}/></worldbody></mujoco>'
    )
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    forward = -data.cam_xmat[0].reshape(3, 3)[:, 2]  # cameras look along their -z axis
    fovy = float(model.cam_fovy[0])
    if crop:
        fovy = float(np.degrees(2 * np.arctan(_CROP_FRACTION * np.tan(np.radians(fovy) / 2))))
    camera = {
        "lookat": data.cam_xpos[0] + forward,
        "distance": 1.0,
        "azimuth": float(np.degrees(np.arctan2(forward[1], forward[0]))),
        "elevation": float(np.degrees(np.arcsin(forward[2]))),
    }
    return camera, fovy


#: The seed of MT1's task variations when MetaWorldEnv is built without one.
_DEFAULT_SEED = 0


class MetaWorldEnv(gym.Env[np.ndarray, np.ndarray]):
    """A MetaWorld task (MT1: its 50 variations, 500-step episodes, ``info["success"]``) framed as in RL-VLM-F.

    RL-VLM-F's tasks and goals: "sweep-into" ("to minimize the distance between the green cube and the
    hole"), "drawer-open" ("to open the drawer"), "soccer" ("to move the soccer ball into the goal"); any
    other MetaWorld task works with an explicit ``camera``. Observations are MetaWorld's 39 floats, actions
    Box(-1, 1, (4,)), rewards MetaWorld's (v2 reward functions).

    Frames come from this env's own renderer (shadows off, no multisampling), not MetaWorld's. Named
    cameras that look at the scene upside down (MetaWorld's corner and behindGripper cameras) are turned
    half a turn about their axis. ``reset(seed=...)`` reseeds MetaWorld's random generator, which its own
    reset ignores, so seeded resets pick the same task variation, in every instance built with the same
    ``seed`` (``None`` included). For sweep-into the block is green, as in
    RL-VLM-F (its goal names "the green cube").

    :param task: MetaWorld task name, with or without "-v3".
    :param render_mode: None or "rgb_array".
    :param render_size: frame side in pixels, or (height, width); RL-VLM-F used 300.
    :param camera: None for RL-VLM-F's camera of ``task`` (see :func:`rlvlmf_camera`), the name of a
        MetaWorld camera ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper",
        "gripperPOV"), or a free-camera pose dict with keys lookat, distance, azimuth, elevation.
    :param hide_robot: leave the Sawyer arm, its gripper and the marker sites out of frames, as RL-VLM-F's
        frames did (its metaworld fork made them transparent); also 2 to 5 times faster to render.
    :param seed: MetaWorld's seed (which 50 task variations, and unseeded resets). ``None``: the variations
        of seed 0, chosen among at random.
    :param mt1_kwargs: more arguments of ``gym.make("Meta-World/MT1", ...)`` (e.g. ``max_episode_steps``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task: str,
        render_mode: Optional[str] = None,
        render_size: Union[int, Tuple[int, int]] = 300,
        camera: Optional[CameraSpec] = None,
        hide_robot: bool = True,
        seed: Optional[int] = None,
        **mt1_kwargs: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        select_mujoco_gl()
        try:
            import metaworld  # noqa: F401  (registers Meta-World/MT1)
        except ImportError as error:
            raise ImportError(
                "the MetaWorld tasks need metaworld: pip install 'vlm-reward-wrappers[metaworld]'"
            ) from error
        mujoco = import_mujoco()
        self.task = metaworld_task_name(task)
        self.render_mode = render_mode
        self.height, self.width = image_shape(render_size)
        # MetaWorld's own observation bounds are wrong before the first task is set (see below), so its
        # env checker would warn on every reset; this env is checked as a whole instead.
        # MT1 draws its 50 variations from numpy's global generator when unseeded, so two instances would
        # differ and reset(seed=s) would repeat a start only within one; the variations always come from a
        # seed, and only the choice among them is left unseeded (VecEnv workers built alike must differ).
        self.metaworld_env = gym.make(
            "Meta-World/MT1", env_name=self.task, seed=_DEFAULT_SEED if seed is None else seed,
            disable_env_checker=True, **mt1_kwargs
        )
        sawyer = self.metaworld_env.unwrapped
        if seed is None:
            sawyer.seed(int(np.random.SeedSequence().generate_state(1)[0]))
        # MetaWorld builds its observation space before a task makes the goal observable and does not
        # update it after; the space of the tasks this env runs has the goal's bounds.
        sawyer.set_task(self.metaworld_env.get_wrapper_attr("tasks")[0])
        self.observation_space = sawyer.sawyer_observation_space
        self.action_space = sawyer.action_space
        model = sawyer.model
        camera = OTHER_TASK_CAMERAS.get(self.task.rsplit("-", 1)[0], camera) if camera is None else camera
        if camera is None or (isinstance(camera, str) and camera in RLVLMF_CAMERAS):
            camera, model.vis.global_.fovy = rlvlmf_camera(camera or self.task)
        self._camera = make_camera(model, camera)
        if isinstance(camera, str):
            self._turn_upright(mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera))
        self._scene_option = mujoco.MjvOption()
        if hide_robot:
            robot = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "base")
            model.geom_group[model.body_rootid[model.geom_bodyid] == robot] = _HIDDEN_GROUP
            self._scene_option.geomgroup[_HIDDEN_GROUP] = 0
            self._scene_option.sitegroup[:] = 0
        if self.task.startswith("sweep-into"):
            block = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "objGeom")
            model.geom_matid[block] = -1
            model.geom_rgba[block] = _GREEN_RGBA
        self._renderer: Optional[Any] = None

    def _turn_upright(self, camera_id: int) -> None:
        mujoco = import_mujoco()
        sawyer = self.metaworld_env.unwrapped
        mujoco.mj_forward(sawyer.model, sawyer.data)
        up = sawyer.data.cam_xmat[camera_id].reshape(3, 3)[:, 1]
        if up[2] < 0:
            turned = np.zeros(4)
            mujoco.mju_mulQuat(turned, sawyer.model.cam_quat[camera_id].copy(), np.array([0.0, 0.0, 0.0, 1.0]))
            sawyer.model.cam_quat[camera_id] = turned

    def reset(
        self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None
    ) -> Tuple[np.ndarray, Dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self.metaworld_env.unwrapped.seed(seed)
        return self.metaworld_env.reset(seed=seed, options=options)

    def step(self, action: np.ndarray) -> Tuple[np.ndarray, float, bool, bool, Dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.metaworld_env.step(action)
        return obs, float(reward), terminated, truncated, info

    def render(self) -> Optional[np.ndarray]:
        """The current frame, (height, width, 3) uint8, when ``render_mode == "rgb_array"``."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode: create the env with render_mode='rgb_array'")
            return None
        sawyer = self.metaworld_env.unwrapped
        if self._renderer is None:
            self._renderer = make_renderer(sawyer.model, self.height, self.width)
        self._renderer.update_scene(sawyer.data, camera=self._camera, scene_option=self._scene_option)
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.metaworld_env.close()


def make_metaworld_env(
    task: str,
    render_size: Union[int, Tuple[int, int]] = 300,
    camera: Optional[CameraSpec] = None,
    render_mode: Optional[str] = "rgb_array",
    **kwargs: Any,
) -> MetaWorldEnv:
    """A rendered MetaWorld task, framed as in RL-VLM-F: :class:`MetaWorldEnv` with frames on by default.

    ``make_metaworld_env("drawer-open", render_size=224)`` is the same env as
    ``gym.make("vlmrw/MetaWorld-drawer-open-v0", render_mode="rgb_array", render_size=224)`` without
    Gymnasium's wrappers; ``kwargs`` are :class:`MetaWorldEnv`'s (``hide_robot``, ``seed``, MT1's).
    """
    return MetaWorldEnv(task, render_mode=render_mode, render_size=render_size, camera=camera, **kwargs)
