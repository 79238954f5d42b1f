"""MuJoCo plumbing shared by the cloth, rope and MetaWorld tasks.

A headless OpenGL backend is chosen before mujoco is first imported, renderers use the settings that
make software rendering fast, and cameras are given by name or by a free-camera pose.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import weakref
from types import ModuleType
from typing import Any, Dict, Optional, Tuple, Union

#: A camera: the name of one in the scene, or a free camera's pose as a dict with any of the keys
#: ``lookat`` (3 floats, m), ``distance`` (m), ``azimuth`` and ``elevation`` (degrees).
CameraSpec = Union[str, Dict[str, Any]]
FREE_CAMERA_KEYS = ("lookat", "distance", "azimuth", "elevation")

_HEADLESS_BACKENDS = ("egl", "osmesa")
_PROBE = "import mujoco; c = mujoco.GLContext(8, 8); c.make_current(); c.free()"
_live_renderers: "weakref.WeakSet[Any]" = weakref.WeakSet()
_exit_hook_registered = False


def select_mujoco_gl() -> Optional[str]:
    """Choose MuJoCo's OpenGL backend for offscreen rendering without a display.

    mujoco reads ``MUJOCO_GL`` once, when it is first imported, and its default (glfw) fails without a
    display. So, only on Linux, only when ``MUJOCO_GL`` is unset and mujoco is not imported yet, this tries
    EGL, then OSMesa, and sets ``MUJOCO_GL`` to the first that creates a GL context. Each try runs in a
    subprocess (about 0.3 s), because a broken GL driver can crash the process that loads it; child
    processes (SubprocVecEnv workers) inherit the variable and skip the tries.

    :return: the backend mujoco will use; None means mujoco's own default.
    """
    if "MUJOCO_GL" in os.environ or "mujoco" in sys.modules or not sys.platform.startswith("linux"):
        return os.environ.get("MUJOCO_GL")
    for backend in _HEADLESS_BACKENDS:
        try:
            probe = subprocess.run(
                [sys.executable, "-c", _PROBE], env={**os.environ, "MUJOCO_GL": backend},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            os.environ["MUJOCO_GL"] = backend
            return backend
    return None


def import_mujoco() -> ModuleType:
    """Import mujoco after choosing a GL backend; a missing mujoco raises an error naming the extra."""
    select_mujoco_gl()
    try:
        import mujoco
    except ImportError as error:
        raise ImportError(
            "the MuJoCo tasks need mujoco: pip install 'vlm-reward-wrappers[mujoco]'"
        ) from error
    return mujoco


def _close_live_renderers() -> None:
    for renderer in list(_live_renderers):
        renderer.close()


def make_renderer(model: Any, height: int, width: int) -> Any:
    """A ``mujoco.Renderer`` with the settings that make software (CPU) rendering fast.

    Shadows and multisampling make Mesa's software rendering 20 to 100 times slower, so they are turned
    off in ``model`` (it is changed in place, before the GL context reads it), and the offscreen buffer is
    grown to hold the frame.

    :param model: the ``mujoco.MjModel`` to render.
    :param height: frame height in pixels.
    :param width: frame width in pixels.
    """
    global _exit_hook_registered
    mujoco = import_mujoco()
    model.light_castshadow[:] = 0
    model.vis.quality.shadowsize = 0
    model.vis.quality.offsamples = 0
    model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), width)
    model.vis.global_.offheight = max(int(model.vis.global_.offheight), height)
    renderer = mujoco.Renderer(model, height, width)
    _live_renderers.add(renderer)
    if not _exit_hook_registered:
        # mujoco's EGL backend registers eglTerminate at exit when its first context is made (just now);
        # exit hooks run last-in first-out, so this one closes unclosed renderers before the display goes,
        # instead of each printing an EGLError from its __del__ at interpreter exit.
        atexit.register(_close_live_renderers)
        _exit_hook_registered = True
    return renderer


def make_camera(model: Any, camera: CameraSpec) -> Any:
    """The ``camera`` argument of ``Renderer.update_scene`` for a camera name or a free-camera pose dict."""
    mujoco = import_mujoco()
    if isinstance(camera, str):
        if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
            raise ValueError(f"no camera named {camera!r} in the scene (cameras: {names}); or pass a dict "
                             f"with keys {FREE_CAMERA_KEYS} for a free camera")
        return camera
    unknown = set(camera) - set(FREE_CAMERA_KEYS)
    if unknown:
        raise ValueError(f"unknown free-camera keys {sorted(unknown)}: use {FREE_CAMERA_KEYS}")
    free = mujoco.MjvCamera()
    free.type = mujoco.mjtCamera.mjCAMERA_FREE
    mujoco.mjv_defaultFreeCamera(model, free)
    for key, value in camera.items():
        if key == "lookat":
            free.lookat[:] = value
        else:
            setattr(free, key, float(value))
    return free


def image_shape(render_size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    """(height, width) in pixels from a side or a (height, width) pair."""
    if isinstance(render_size, int):
        return render_size, render_size
    height, width = render_size
    return int(height), int(width)
