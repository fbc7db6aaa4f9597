"""MuJoCo 6-DoF arm with gripper and two cameras as gymnasium environments, scripted expert, and the sim node that impersonates the robot."""
import ctypes.util
import os


def _select_gl_backend() -> None:
    """Pick a headless OpenGL backend before mujoco is imported (it reads MUJOCO_GL once, at import).

    An unset MUJOCO_GL means GLFW, which needs a display; prefer EGL, fall back to OSMesa. A caller's choice wins.
    """
    if os.environ.get('MUJOCO_GL'):
        return
    if ctypes.util.find_library('EGL'):
        backend = 'egl'
    elif ctypes.util.find_library('OSMesa'):
        backend = 'osmesa'
    else:
        return
    os.environ['MUJOCO_GL'] = backend
    os.environ.setdefault('PYOPENGL_PLATFORM', backend)


_select_gl_backend()


def _register_envs() -> None:
    try:
        import gymnasium
    except ImportError:  # the ROS-only parts of the package do not need gymnasium
        return
    for env_id, task in (('poco_sim/PickCube-v0', 'pick_cube'), ('poco_sim/PegInsert-v0', 'peg_insert')):
        if env_id not in gymnasium.registry:
            # Lazy entry point: mujoco is imported only when an env is made.
            gymnasium.register(env_id, entry_point='poco_sim.envs:PocoArmEnv', kwargs={'task': task})


_register_envs()
