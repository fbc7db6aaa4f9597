"""Scripted expert for the poco_sim tasks: phase machine + damped-least-squares IK on the MuJoCo Jacobian.

The expert is closed-loop on the privileged state (object pose, TCP pose) and the measured joints, re-deciding
its phase every tick from what it sees, so it recovers from its own noise and from injected perturbations
(DAgger-style demonstrations). It keeps a private MjData for kinematics, so it never disturbs the env's
simulation and also works from observations received over ROS (`obs = {'state': ..., 'proprio': ...}`).

Actions are in physical units (docs/architecture.md): 6 joint deltas, |delta| <= max_joint_delta, + gripper
command in [0, 1] (0 closed).
"""
from __future__ import annotations

import math

import mujoco
import numpy as np

from poco_sim import envs as E

# "Noisy demo" presets per task: Gaussian action noise (fraction of max_joint_delta) + random perturbation
# bursts, tuned so that benchmarks/expert_success.py measures ~60-80 % success. The precision task tolerates far
# less noise (2 mm clearance) than the pick, hence different levels.
NOISY = {
    'pick_cube': {'noise_std': 0.37, 'recovery_prob': 0.05},
    'peg_insert': {'noise_std': 0.1, 'recovery_prob': 0.05},
}

# State vector slices (envs.STATE_LAYOUT).
_OBJ_P, _OBJ_Q, _EE_P, _EE_Q = slice(0, 3), slice(3, 7), slice(7, 10), slice(10, 14)
_GOAL = slice(17, 20)
_R_DOWN = np.diag([-1.0, 1.0, -1.0])  # tool z down, fingers opening along world y (yaw 0)


def _rotz(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _quat2mat(q: np.ndarray) -> np.ndarray:
    m = np.empty(9)
    mujoco.mju_quat2Mat(m, np.asarray(q, dtype=float))
    return m.reshape(3, 3)


def _rot_error(r_des: np.ndarray, r_cur: np.ndarray) -> np.ndarray:
    """Rotation vector (world frame) taking r_cur to r_des."""
    q = np.empty(4)
    mujoco.mju_mat2Quat(q, (r_des @ r_cur.T).flatten())
    if q[0] < 0:
        q = -q
    v = np.empty(3)
    mujoco.mju_quat2Vel(v, q, 1.0)
    return v


def _clip_norm(v: np.ndarray, max_norm: float) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v if n <= max_norm else v * (max_norm / n)


def _wrap_half_pi(a: float) -> float:
    """Wrap to (-pi/4, pi/4]: a square's yaw is defined modulo 90 degrees."""
    return (a + math.pi / 4) % (math.pi / 2) - math.pi / 4


class ScriptedExpert:
    """`act(obs, info) -> action`. `noise_std`: Gaussian action noise as a fraction of max_joint_delta;
    `recovery_prob`: per-tick probability of starting a random perturbation burst (3-8 ticks) that the expert
    then recovers from."""

    def __init__(self, env, noise_std: float = 0.0, recovery_prob: float = 0.0, seed: int | None = None,
                 *, damping: float = 0.05, max_cart_step: float = 0.035, max_rot_step: float = 0.25):
        self.env = env.unwrapped
        self.task = self.env.task
        self.model = self.env.model
        self.data = mujoco.MjData(self.model)  # private: IK must not touch the env's simulation state
        self.max_joint_delta = self.env.max_joint_delta
        self.noise_std = float(noise_std)
        self.recovery_prob = float(recovery_prob)
        self.damping = float(damping)
        self.max_cart_step = float(max_cart_step)
        self.max_rot_step = float(max_rot_step)
        self.rng = np.random.default_rng(seed)
        self._arm_qadr = self.env._arm_qadr
        self._arm_dadr = self.env._arm_dadr
        self._site = self.env._ee_site
        self._jacp = np.zeros((3, self.model.nv))
        self._jacr = np.zeros((3, self.model.nv))
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.phase = 'approach'
        self._ticks_in_phase = 0
        self._perturb_left = 0
        self._perturb_delta = np.zeros(6)
        self._best_z = 0.0
        self.perturbing = False  # True while the last action was a perturbation (not expert behaviour)

    # ------------------------------------------------------------------ main entry
    def act(self, obs: dict, info: dict | None = None) -> np.ndarray:
        q = np.asarray(obs['proprio'][:6], dtype=float)
        grip = float(obs['proprio'][6])
        state = np.asarray(obs['state'], dtype=float) if 'state' in obs else self.env.state_vector().astype(float)
        if self.task == 'pick_cube':
            pos_t, r_t, grip_cmd, max_step = self._pick_cube(state, grip)
        else:
            pos_t, r_t, grip_cmd, max_step = self._peg_insert(state)
        delta = self._ik_step(q, pos_t, r_t, max_step)
        self.perturbing = False
        if self._perturb_left > 0:
            delta = self._perturb_delta.copy()
            self._perturb_left -= 1
            self.perturbing = True
        elif self.recovery_prob > 0 and self.rng.random() < self.recovery_prob:
            self._perturb_left = int(self.rng.integers(3, 9)) - 1
            self._perturb_delta = self.rng.uniform(-0.8, 0.8, 6) * self.max_joint_delta
            delta = self._perturb_delta.copy()
            self.perturbing = True
        if self.noise_std > 0:
            delta = delta + self.rng.normal(0.0, self.noise_std * self.max_joint_delta, 6)
        delta = np.clip(delta, -self.max_joint_delta, self.max_joint_delta)
        return np.append(delta, grip_cmd).astype(np.float32)

    # ------------------------------------------------------------------ IK
    def _ik_step(self, q: np.ndarray, pos_t: np.ndarray, r_t: np.ndarray, max_step: float) -> np.ndarray:
        """One damped-least-squares step towards the TCP pose target, scaled to respect max_joint_delta."""
        m, d = self.model, self.data
        d.qpos[self._arm_qadr] = q
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)  # mj_jacSite needs cdof/subtree_com
        mujoco.mj_jacSite(m, d, self._jacp, self._jacr, self._site)
        J = np.vstack([self._jacp[:, self._arm_dadr], self._jacr[:, self._arm_dadr]])
        r_cur = d.site_xmat[self._site].reshape(3, 3)
        e = np.concatenate([_clip_norm(pos_t - d.site_xpos[self._site], max_step),
                            _clip_norm(_rot_error(r_t, r_cur), self.max_rot_step)])
        dq = J.T @ np.linalg.solve(J @ J.T + self.damping**2 * np.eye(6), e)
        peak = float(np.max(np.abs(dq)))
        if peak > self.max_joint_delta:  # uniform scaling keeps the Cartesian direction
            dq *= self.max_joint_delta / peak
        return dq

    def _grasp_rotation(self, obj_quat: np.ndarray, ee_quat: np.ndarray) -> np.ndarray:
        """Tool down, yaw aligned with the cube's faces (mod 90 deg), the alignment nearest the current yaw."""
        r_obj = _quat2mat(obj_quat)
        obj_yaw = math.atan2(r_obj[1, 0], r_obj[0, 0])
        r_ee = _quat2mat(ee_quat)
        ee_yaw = math.atan2(-r_ee[0, 1], r_ee[1, 1])  # yaw of the finger-opening axis (tool y)
        yaw = ee_yaw + _wrap_half_pi(obj_yaw - ee_yaw)
        return _rotz(yaw) @ _R_DOWN

    # ------------------------------------------------------------------ pick_cube
    def _pick_cube(self, s: np.ndarray, grip: float):
        cube, ee = s[_OBJ_P], s[_EE_P]
        r_t = self._grasp_rotation(s[_OBJ_Q], s[_EE_Q])
        rel = cube - ee
        xy_err = float(np.linalg.norm(rel[:2]))
        # Closed on the cube: the pads stop at the cube's width (opening ~0.5), not fully closed (~0).
        holding = grip < 0.65 and grip > 0.3 and xy_err < 0.015 and abs(rel[2]) < 0.02
        hover = np.array([cube[0], cube[1], cube[2] + 0.10])
        grasp_at = np.array([cube[0], cube[1], cube[2] + 0.01])  # finger tips ~5 mm above the table
        self._ticks_in_phase += 1
        prev = self.phase
        if self.phase == 'approach':
            if np.linalg.norm(hover - ee) < 0.015 and grip > 0.9 and self._yaw_ok(r_t, s[_EE_Q]):
                self.phase = 'descend'
        elif self.phase == 'descend':
            if xy_err > 0.02:
                self.phase = 'approach'
            elif np.linalg.norm(grasp_at - ee) < 0.006:
                self.phase = 'grasp'
        elif self.phase == 'grasp':
            if xy_err > 0.02:
                self.phase = 'approach'
            elif self._ticks_in_phase >= 4 and holding:
                self.phase = 'lift'
            elif self._ticks_in_phase >= 8:  # closed on nothing: start over
                self.phase = 'approach'
        elif self.phase == 'lift':
            if not holding:
                self.phase = 'approach'
        if self.phase != prev:
            self._ticks_in_phase = 0
        if self.phase == 'approach':
            # Stay high while far away so the fingers never sweep the cube; open first.
            return hover, r_t, 1.0, self.max_cart_step
        if self.phase == 'descend':
            return grasp_at, r_t, 1.0, 0.02
        if self.phase == 'grasp':
            return grasp_at, r_t, 0.0, 0.01
        lift_to = np.array([cube[0], cube[1], s[_GOAL][2] + 0.04])
        return lift_to, r_t, 0.0, 0.025

    def _yaw_ok(self, r_t: np.ndarray, ee_quat: np.ndarray) -> bool:
        return float(np.linalg.norm(_rot_error(r_t, _quat2mat(ee_quat)))) < 0.05

    # ------------------------------------------------------------------ peg_insert
    def _peg_insert(self, s: np.ndarray):
        peg, ee, hole = s[_OBJ_P], s[_EE_P], s[_GOAL]
        axis = _quat2mat(s[_OBJ_Q])[:, 2]
        bottom = min(peg + axis * E.PEG_HALF_LEN, peg - axis * E.PEG_HALF_LEN, key=lambda p: p[2])
        # Tool vertical, yaw on the hole's faces (the block is axis-aligned, a square is symmetric under 90 deg).
        # Deliberately not servoing on the peg's own tilt/yaw: in the compliant grasp it lags the gripper, and
        # chasing it makes the wrist oscillate until the peg is shaken out. The 2 mm clearance tolerates ~9 deg.
        r_ee = _quat2mat(s[_EE_Q])
        ee_yaw = math.atan2(-r_ee[0, 1], r_ee[1, 1])
        r_t = _rotz(ee_yaw - _wrap_half_pi(ee_yaw)) @ _R_DOWN
        xy_err = hole[:2] - bottom[:2]
        xy_dist = float(np.linalg.norm(xy_err))
        hover = np.array([hole[0], hole[1], hole[2] + 0.04])
        above = np.array([hole[0], hole[1], hole[2] + 0.012])
        self._ticks_in_phase += 1
        prev = self.phase
        if self.phase == 'approach':  # fast, to 4 cm above the block
            if np.linalg.norm(hover - bottom) < 0.01:
                self.phase = 'align'
        elif self.phase == 'align':  # slow, settle 1.2 cm above the hole, aligned to ~1 mm
            # Tolerance grows while waiting: with noisy actions the 1 mm may never be met exactly.
            tol = 0.001 + 0.0003 * self._ticks_in_phase
            if xy_dist > 0.01:
                self.phase = 'approach'
            elif abs(above[2] - bottom[2]) < 0.004 and xy_dist < min(tol, 0.0025):
                self.phase = 'insert'
        elif self.phase == 'insert':
            self._best_z = min(self._best_z, bottom[2]) if self._ticks_in_phase > 1 else bottom[2]
            jammed = self._ticks_in_phase > 3 and bottom[2] > self._best_z - 1e-4 and bottom[2] > hole[2] - 0.01
            # Misaligned or jammed on the rim (e.g. after noise or a perturbation): back off and re-align.
            if (xy_dist > 0.004 and bottom[2] > hole[2] - 0.01) or jammed:
                self.phase = 'align'
        if self.phase != prev:
            self._ticks_in_phase = 0
        if self.phase == 'insert':
            target_b = np.array([hole[0], hole[1], hole[2] - E.INSERT_DEPTH - 0.015])
            return ee + (target_b - bottom), r_t, 0.0, 0.008
        if bottom[2] < hole[2] + 0.008 and xy_dist > 0.003:
            # Touching the block off-centre: rise straight up first so the peg does not drag over the rim.
            target_b = np.array([bottom[0], bottom[1], hole[2] + 0.02])
            return ee + (target_b - bottom), r_t, 0.0, 0.01
        if self.phase == 'approach':
            # Move the peg's bottom (not the TCP) above the hole: the grasp offset may have shifted.
            return ee + (hover - bottom), r_t, 0.0, self.max_cart_step
        return ee + (above - bottom), r_t, 0.0, 0.01
