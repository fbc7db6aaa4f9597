"""Gymnasium environments: a 6-DoF arm with a parallel gripper on a table, two cameras, two tasks.

Contract (docs/architecture.md): action = 6 delta joint positions [rad] (|delta| <= max_joint_delta) + absolute
gripper command in [0, 1] (0 closed, 1 open), 15 Hz; joint target = clip(measured q + delta, joint limits).
Observation: pixels mode {'front', 'wrist' uint8 HxWx3, 'proprio' float32[7]}, state mode {'state' float32[20],
'proprio' float32[7]}. Reward 1.0 on the success step, `terminated` on success, `truncated` at max_steps.
All positions are in the robot base frame `base_link` (= MuJoCo world frame), metres; quaternions wxyz.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import poco_sim  # noqa: F401  (selects the headless GL backend before mujoco is imported)

import gymnasium
import mujoco
import numpy as np
from gymnasium import spaces

from poco_sim.config import ARM_JOINTS, CAMERAS, DEFAULT_BBOX_CM, MAX_JOINT_DELTA

ASSETS = Path(__file__).resolve().parent / 'assets'
GRIPPER_NAME = 'gripper'
FINGER_MAX = 0.04  # finger joint travel [m]; opening 1.0 = 8 cm between the pads
# Home: tool pointing down, fingers opening along world y, TCP at ~(0.42, 0, 0.22).
HOME_QPOS = np.array([0.0, 0.41, 1.89, 0.0, math.pi - 0.41 - 1.89, 0.0])
# Privileged state layout (state mode): these 20 numbers for every task, then the task's `extra_state`.
STATE_LAYOUT = (('object_pos', 3), ('object_quat', 4), ('ee_pos', 3), ('ee_quat', 4),
                ('object_minus_ee', 3), ('goal_pos', 3))
STATE_DIM = sum(n for _, n in STATE_LAYOUT)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    xml: str
    max_steps: int
    object_range: float  # default half-width [m] of the square in which the object / hole xy is drawn
    object_center: tuple[float, float]
    yaw_range: float  # object yaw drawn in [-yaw_range, yaw_range] [rad]
    # Named features appended to STATE_LAYOUT for this task. peg_insert adds the hole relative to the peg:
    # from absolute positions alone a BC policy pre-trained on 10-30 demonstrations could not find the hole
    # (0-10 % success vs 20-35 % with it; docs/learning.md), while pick_cube already has object_minus_ee.
    extra_state: tuple = ()

    @property
    def state_layout(self) -> tuple:
        return STATE_LAYOUT + tuple(self.extra_state)

    @property
    def state_dim(self) -> int:
        return sum(n for _, n in self.state_layout)


TASKS = {
    'pick_cube': TaskSpec('pick_cube', 'pick_cube.xml', max_steps=100, object_range=0.05,
                          object_center=(0.45, 0.0), yaw_range=math.pi / 4),
    'peg_insert': TaskSpec('peg_insert', 'peg_insert.xml', max_steps=100, object_range=0.05,
                           object_center=(0.45, 0.0), yaw_range=0.0, extra_state=(('goal_minus_object', 3),)),
}

# Task geometry (must match the XML assets).
CUBE_HALF = 0.02
LIFT_HEIGHT = 0.05  # success: cube raised >= 5 cm and still between the fingers
PEG_HALF_WIDTH = 0.0125
PEG_HALF_LEN = 0.05
PEG_TOP_ABOVE_TCP = 0.03  # the peg is held with its top 3 cm above the TCP (its centre of mass between the pads)
HOLE_TOP = 0.05
HOLE_HALF_WIDTH = 0.0145
INSERT_DEPTH = 0.03  # success: peg bottom >= 3 cm below the block's top, inside the hole


def _as_xy_range(r: float | Sequence[float] | None, default: float) -> np.ndarray:
    if r is None:
        r = default
    a = np.broadcast_to(np.asarray(r, dtype=float), (2,)).copy()
    if np.any(a < 0):
        raise ValueError(f'object_range must be >= 0, got {r}')
    return a


class PocoArmEnv(gymnasium.Env):
    """The arm + task environment (see module docstring). Use `make_env` or the registered gymnasium ids."""

    metadata = {'render_modes': ['rgb_array'], 'render_fps': 15}

    def __init__(self, task: str = 'pick_cube', obs_mode: str = 'pixels', image_size: int = 128,
                 max_steps: int | None = None, object_range: float | Sequence[float] | None = None,
                 seed: int | None = None, *, control_rate_hz: float = 15.0, max_joint_delta: float = MAX_JOINT_DELTA,
                 bbox_cm: Sequence[float] = DEFAULT_BBOX_CM, physics_dt: float = 0.0035,
                 init_qpos_noise: float = 0.02, target_ramp: float = 0.5, render_quality: str = 'fast',
                 cameras: Sequence[str] = CAMERAS, render_mode: str | None = None):
        if task not in TASKS:
            raise ValueError(f'unknown task {task!r}; known: {sorted(TASKS)}')
        if obs_mode not in ('pixels', 'state'):
            raise ValueError(f"obs_mode must be 'pixels' or 'state', got {obs_mode!r}")
        if render_quality not in ('fast', 'default'):
            raise ValueError(f"render_quality must be 'fast' or 'default', got {render_quality!r}")
        if not cameras or any(c not in CAMERAS for c in cameras):
            raise ValueError(f'cameras must be a non-empty subset of {CAMERAS}, got {cameras!r}')
        if len(bbox_cm) != 6:
            raise ValueError('bbox_cm must be (xmin, xmax, ymin, ymax, zmin, zmax) in cm')
        if not 0.0 <= target_ramp <= 1.0:
            raise ValueError(f'target_ramp must be in [0, 1], got {target_ramp}')
        self.spec_task = TASKS[task]
        self.task = task
        self.obs_mode = obs_mode
        self.image_size = int(image_size)
        self.max_steps = int(max_steps) if max_steps else self.spec_task.max_steps
        self.object_range = _as_xy_range(object_range, self.spec_task.object_range)
        self.control_rate_hz = float(control_rate_hz)
        self.max_joint_delta = float(max_joint_delta)
        self.bbox_cm = tuple(float(v) for v in bbox_cm)
        self.init_qpos_noise = float(init_qpos_noise)
        self.render_quality = render_quality
        self.cameras = tuple(cameras)
        self.render_mode = render_mode

        self.model = mujoco.MjModel.from_xml_path(str(ASSETS / self.spec_task.xml))
        # Integer number of physics steps per control tick so that one env step is exactly 1/control_rate.
        control_dt = 1.0 / self.control_rate_hz
        self.n_substeps = max(1, int(math.ceil(control_dt / physics_dt - 1e-9)))
        self.model.opt.timestep = control_dt / self.n_substeps
        # A new joint target is ramped in linearly over the first `target_ramp` of the tick, like a robot
        # driver interpolating 15 Hz set-points. A step change instead jerks the arm at every tick, which
        # shakes grasped objects loose (the pre-grasped peg dropped under mild motion).
        self._ramp_steps = int(round(target_ramp * self.n_substeps))
        self.data = mujoco.MjData(self.model)
        self._ctrl_start = np.zeros(6)

        m = self.model
        self._arm_qadr = np.array([m.jnt_qposadr[m.joint(n).id] for n in ARM_JOINTS])
        self._arm_dadr = np.array([m.jnt_dofadr[m.joint(n).id] for n in ARM_JOINTS])
        self._finger_qadr = np.array([m.jnt_qposadr[m.joint(n).id] for n in ('finger_left', 'finger_right')])
        self._arm_act = np.array([m.actuator(n).id for n in ARM_JOINTS])
        assert list(self._arm_act) == list(range(6)), 'arm actuators must come first (sliced in _advance)'
        self._arm_ctrl = slice(0, 6)
        self._ramp_fracs = np.arange(1, self._ramp_steps + 1) / max(self._ramp_steps, 1)
        self._finger_act = np.array([m.actuator(n).id for n in ('finger_left', 'finger_right')])
        self.joint_limits = np.array([m.jnt_range[m.joint(n).id] for n in ARM_JOINTS])  # [6, 2]
        self._ee_site = m.site('ee').id
        self._obj_body = m.body('object').id
        obj_jnt = m.joint('object').id
        self._obj_qadr = m.jnt_qposadr[obj_jnt]
        self._obj_dadr = m.jnt_dofadr[obj_jnt]
        self._hole_mocap = m.body_mocapid[m.body('hole').id] if task == 'peg_insert' else -1
        self._goal_pos = np.zeros(3)

        n = self.image_size
        # Bounds with a margin: the soft joint limits can be exceeded slightly under contact.
        lo = np.append(self.joint_limits[:, 0] - 0.1, 0.0).astype(np.float32)
        hi = np.append(self.joint_limits[:, 1] + 0.1, 1.0).astype(np.float32)
        obs_spaces: dict[str, spaces.Space] = {'proprio': spaces.Box(lo, hi, dtype=np.float32)}
        if obs_mode == 'pixels':
            for cam in self.cameras:
                obs_spaces[cam] = spaces.Box(0, 255, shape=(n, n, 3), dtype=np.uint8)
        else:
            # Positions [m] and quaternion components: a dropped object stays well inside +-5.
            obs_spaces['state'] = spaces.Box(-5.0, 5.0, shape=(self.state_dim,), dtype=np.float32)
        self.observation_space = spaces.Dict(obs_spaces)
        mjd = self.max_joint_delta
        self.action_space = spaces.Box(low=np.array([-mjd] * 6 + [0.0], dtype=np.float32),
                                       high=np.array([mjd] * 6 + [1.0], dtype=np.float32), dtype=np.float32)

        self._renderer: mujoco.Renderer | None = None
        self._fk_data: mujoco.MjData | None = None
        self._steps = 0
        self._success = False
        self._holding = False
        self._gripper_cmd = 1.0
        self.episode_seed: int | None = None
        # Sub-generators per episode: the scene layout must not depend on how many steps the last episode took.
        self._seed_seq_rng = np.random.default_rng(seed)
        self.reset(seed=seed)

    # ------------------------------------------------------------------ accessors
    @property
    def joint_names(self) -> list[str]:
        """Names as published on `joint_states`: joint1..joint6 then `gripper`."""
        return list(ARM_JOINTS) + [GRIPPER_NAME]

    @property
    def control_dt(self) -> float:
        return 1.0 / self.control_rate_hz

    @property
    def sim_time(self) -> float:
        return float(self.data.time)

    @property
    def step_count(self) -> int:
        return self._steps

    @property
    def succeeded(self) -> bool:
        return self._success

    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self._arm_qadr].copy()

    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel[self._arm_dadr].copy()

    def gripper_opening(self) -> float:
        """Measured opening in [0, 1] (mean finger travel / full travel)."""
        return float(np.clip(self.data.qpos[self._finger_qadr].mean() / FINGER_MAX, 0.0, 1.0))

    def proprio(self) -> np.ndarray:
        return np.append(self.joint_positions(), self.gripper_opening()).astype(np.float32)

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (3,) and orientation quaternion (w, x, y, z) in base_link."""
        pos = self.data.site_xpos[self._ee_site].copy()
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, self.data.site_xmat[self._ee_site])
        return pos, quat

    def forward_kinematics(self, joint_positions) -> tuple[np.ndarray, np.ndarray]:
        """TCP (position, quaternion wxyz) for given arm joint angles, on a private MjData (the simulation
        is not touched); e.g. to publish ee_pose for recorded joint states."""
        if self._fk_data is None:
            self._fk_data = mujoco.MjData(self.model)
        d = self._fk_data
        d.qpos[self._arm_qadr] = np.asarray(joint_positions, dtype=float).reshape(6)
        mujoco.mj_kinematics(self.model, d)
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, d.site_xmat[self._ee_site])
        return d.site_xpos[self._ee_site].copy(), quat

    def object_pose(self) -> tuple[np.ndarray, np.ndarray]:
        return (self.data.xpos[self._obj_body].copy(), self.data.xquat[self._obj_body].copy())

    @property
    def state_dim(self) -> int:
        """Length of the state vector for this task (STATE_DIM + the task's extra_state)."""
        return self.spec_task.state_dim

    @property
    def goal_pos(self) -> np.ndarray:
        return self._goal_pos.copy()

    def state_vector(self) -> np.ndarray:
        """Privileged state (STATE_LAYOUT); available in both obs modes (the expert uses it)."""
        obj_p, obj_q = self.object_pose()
        ee_p, ee_q = self.ee_pose()
        parts = [obj_p, obj_q, ee_p, ee_q, obj_p - ee_p, self._goal_pos]
        for name, _ in self.spec_task.extra_state:
            if name == 'goal_minus_object':
                parts.append(self._goal_pos - obj_p)
            else:
                raise ValueError(f'unknown extra state feature {name!r}')
        return np.concatenate(parts).astype(np.float32)

    def ee_in_bbox(self, pos: np.ndarray | None = None) -> bool:
        p = (self.data.site_xpos[self._ee_site] if pos is None else pos) * 100.0  # m -> cm
        b = self.bbox_cm
        return bool(b[0] <= p[0] <= b[1] and b[2] <= p[1] <= b[3] and b[4] <= p[2] <= b[5])

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        # The episode's scene is a pure function of its seed: reset(seed=s) always gives the same scene.
        if seed is None:
            seed = int(self._seed_seq_rng.integers(0, 2**31 - 1))
        else:
            self._seed_seq_rng = np.random.default_rng(seed + 1)  # the following unseeded resets are seeded too
        super().reset(seed=seed)
        self.episode_seed = int(seed)
        rng = self.np_random
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        q0 = HOME_QPOS + rng.uniform(-self.init_qpos_noise, self.init_qpos_noise, 6)
        d.qpos[self._arm_qadr] = q0
        d.ctrl[self._arm_act] = q0
        c = np.asarray(self.spec_task.object_center)
        xy = c + rng.uniform(-self.object_range, self.object_range)
        if self.task == 'pick_cube':
            yaw = rng.uniform(-self.spec_task.yaw_range, self.spec_task.yaw_range)
            self._set_object(np.array([xy[0], xy[1], CUBE_HALF]), _yaw_quat(yaw))
            self._set_fingers(1.0)
            self._goal_pos = np.array([xy[0], xy[1], CUBE_HALF + LIFT_HEIGHT])
            mujoco.mj_forward(m, d)
        else:
            d.mocap_pos[self._hole_mocap] = [xy[0], xy[1], 0.0]
            self._goal_pos = np.array([xy[0], xy[1], HOLE_TOP])
            self._set_fingers(PEG_HALF_WIDTH / FINGER_MAX)
            mujoco.mj_kinematics(m, d)
            # Peg pre-grasped: aligned with the tool (whose z points down), top PEG_TOP_ABOVE_TCP above the TCP.
            R = d.site_xmat[self._ee_site].reshape(3, 3)
            tool_z = R[:, 2]
            center = d.site_xpos[self._ee_site] + tool_z * (PEG_HALF_LEN - PEG_TOP_ABOVE_TCP)
            quat = np.empty(4)
            mujoco.mju_mat2Quat(quat, R.flatten())
            self._set_object(center, quat)
            d.ctrl[self._finger_act] = 0.0
            self._gripper_cmd = 0.0
            # Let the fingers take up the grip force before the episode starts (0.2 s, arm held).
            mujoco.mj_step(m, d, nstep=max(1, int(round(0.2 / m.opt.timestep))))
            d.time = 0.0
        self._steps = 0
        self._success = False
        self._holding = False
        self._ctrl_start = d.ctrl[self._arm_act].copy()
        mujoco.mj_forward(m, d)
        return self._obs(), self._info()

    def step(self, action):
        a = np.asarray(action, dtype=float).reshape(-1)
        if a.shape != (7,) or not np.all(np.isfinite(a)):
            raise ValueError(f'action must be 7 finite floats, got {action!r}')
        delta = np.clip(a[:6], -self.max_joint_delta, self.max_joint_delta)
        return self.step_targets(self.joint_positions() + delta, a[6])

    def step_targets(self, joint_targets, gripper_cmd):
        """Advance one control tick towards absolute joint targets [rad] (clipped to the joint limits)
        with gripper command in [0, 1]. This is what a driver (the sim node) applies."""
        t = np.asarray(joint_targets, dtype=float).reshape(-1)
        if t.shape != (6,) or not np.all(np.isfinite(t)) or not math.isfinite(float(gripper_cmd)):
            raise ValueError('joint_targets must be 6 finite floats and gripper_cmd finite')
        self.data.ctrl[self._arm_act] = np.clip(t, self.joint_limits[:, 0], self.joint_limits[:, 1])
        self._gripper_cmd = float(np.clip(gripper_cmd, 0.0, 1.0))
        self.data.ctrl[self._finger_act] = self._gripper_cmd * FINGER_MAX
        self._holding = False
        return self._advance()

    def hold(self):
        """Advance one tick holding the arm where it is (e-stop): targets = measured joints at the first hold,
        kept while holding; gripper command unchanged (do not drop what is grasped)."""
        if not self._holding:
            q = self.joint_positions()
            self.data.ctrl[self._arm_act] = q
            self._ctrl_start = q  # stop at once: no ramp from the previous set-point
            self._holding = True
        return self._advance()

    def render(self):
        """rgb_array of the front camera (gymnasium API); observations use `render_cameras`."""
        return self.render_cameras(['front'])['front']

    def render_cameras(self, cameras: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """RGB uint8 [H, W, 3] per camera (default: the env's cameras)."""
        r = self._get_renderer()
        out = {}
        for cam in (self.cameras if cameras is None else cameras):
            r.update_scene(self.data, camera=cam)
            out[cam] = r.render()
        return out

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------ internals
    def _advance(self):
        m, d = self.model, self.data
        ctrl = d.ctrl[self._arm_ctrl]  # a view (the arm actuators are the first six)
        target = ctrl.copy()
        k = self._ramp_steps
        if k:
            ramp = self._ctrl_start + np.outer(self._ramp_fracs, target - self._ctrl_start)
            for row in ramp:  # per-substep set-points; the Python loop costs ~3 us per substep
                ctrl[:] = row
                mujoco.mj_step(m, d)
        if self.n_substeps > k:
            mujoco.mj_step(m, d, nstep=self.n_substeps - k)
        self._ctrl_start = target
        self._steps += 1
        reward = 0.0
        if not self._success and self._check_success():
            self._success = True
            reward = 1.0
        obs = self._obs()
        info = self._info()
        truncated = self._steps >= self.max_steps and not self._success
        return obs, reward, self._success, truncated, info

    def _check_success(self) -> bool:
        obj = self.data.xpos[self._obj_body]
        ee = self.data.site_xpos[self._ee_site]
        if self.task == 'pick_cube':
            held = np.linalg.norm(obj - ee) < 0.04
            return bool(obj[2] >= CUBE_HALF + LIFT_HEIGHT and held)
        # Peg's lower end (whichever end is lower: the peg may be upside down after a drop) inside the hole.
        axis = self.data.xmat[self._obj_body].reshape(3, 3)[:, 2] * PEG_HALF_LEN
        bottom = obj - axis if axis[2] > 0 else obj + axis
        hole = self._goal_pos
        inside = np.all(np.abs(bottom[:2] - hole[:2]) < HOLE_HALF_WIDTH)
        return bool(inside and bottom[2] <= HOLE_TOP - INSERT_DEPTH)

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {'proprio': self.proprio()}
        if self.obs_mode == 'pixels':
            obs.update(self.render_cameras())
        else:
            obs['state'] = self.state_vector()
        return obs

    def _info(self) -> dict[str, Any]:
        ee = self.data.site_xpos[self._ee_site].copy()
        return {'success': self._success, 'ee_pos': ee, 'bbox_violation': not self.ee_in_bbox(ee),
                'joint_pos': self.joint_positions(), 'steps': self._steps}

    def _set_object(self, pos, quat):
        a, v = self._obj_qadr, self._obj_dadr
        self.data.qpos[a:a + 3] = pos
        self.data.qpos[a + 3:a + 7] = quat
        self.data.qvel[v:v + 6] = 0.0

    def _set_fingers(self, opening: float):
        self.data.qpos[self._finger_qadr] = opening * FINGER_MAX
        self.data.ctrl[self._finger_act] = opening * FINGER_MAX
        self._gripper_cmd = float(opening)

    def _get_renderer(self) -> mujoco.Renderer:
        if self._renderer is None:
            m = self.model
            n = self.image_size
            m.vis.global_.offwidth = max(m.vis.global_.offwidth, n)
            m.vis.global_.offheight = max(m.vis.global_.offheight, n)
            if self.render_quality == 'default':
                # MuJoCo's out-of-the-box look (reference for the benchmark): 4096 shadow map, 4x MSAA,
                # shadow-casting light, reflections on.
                m.vis.quality.shadowsize = 4096
                m.vis.quality.offsamples = 4
                m.light_castshadow[:] = 1
            try:
                self._renderer = mujoco.Renderer(m, height=n, width=n)
            except Exception as e:  # no usable GL context: say what to do instead of a bare GL error
                raise RuntimeError(
                    f'cannot create a headless MuJoCo renderer (MUJOCO_GL={__import__("os").environ.get("MUJOCO_GL")}):'
                    f' {e}. Use MUJOCO_GL=egl (or osmesa with libosmesa6), or obs_mode="state".') from e
            flags = self._renderer.scene.flags
            fast = self.render_quality == 'fast'
            # Shadows and reflections cost ~3x the frame time on llvmpipe and add nothing a policy needs.
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = not fast
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = not fast
            flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = not fast
        return self._renderer


def _yaw_quat(yaw: float) -> np.ndarray:
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def make_env(task: str = 'pick_cube', obs_mode: str = 'pixels', image_size: int = 128, max_steps: int | None = None,
             object_range: float | Sequence[float] | None = None, seed: int | None = None, **kw) -> PocoArmEnv:
    """Build the (unwrapped) environment; extra keywords go to `PocoArmEnv` (control_rate_hz, max_joint_delta,
    bbox_cm, physics_dt, init_qpos_noise, target_ramp, render_quality, cameras)."""
    return PocoArmEnv(task=task, obs_mode=obs_mode, image_size=image_size, max_steps=max_steps,
                      object_range=object_range, seed=seed, **kw)
