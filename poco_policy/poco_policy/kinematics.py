"""End-effector position for the safety box, without ROS: forward kinematics from a URDF (in-process, MuJoCo)
or a pose topic, and which of them is fresh.

- `UrdfKinematics`: loads a robot description with MuJoCo (which reads URDF) and maps arm joint positions to the
  position of a named link in a named base link. Only the kinematic chain is used: visuals and collisions are
  stripped before loading (real descriptions name meshes by package:// URIs MuJoCo cannot open), fixed joints are
  kept as bodies (MuJoCo would otherwise fuse a fixed tool link such as `tool0` into its parent and lose its
  name), and tiny masses are allowed (links without inertial are common in descriptions).
- `EndEffector`: the box's one source of truth. With a description: FK of the newest sane joint state. Without:
  the newest pose from the topic, in the base frame, no older than the staleness limit. Neither: None and a
  reason, so the caller holds and says why (the box is never silently off).
- `resolve_path`: 'package://pkg/rel' -> the installed share folder of pkg (ament_index, imported lazily).
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Optional, Sequence

import numpy as np


def resolve_path(path: str) -> str:
    """A file path, `~` expanded; 'package://<pkg>/<rel>' resolves in <pkg>'s share folder (ROS convention)."""
    if path.startswith('package://'):
        pkg, _, rel = path[len('package://'):].partition('/')
        from ament_index_python.packages import get_package_share_directory
        return os.path.join(get_package_share_directory(pkg), rel)
    return os.path.expanduser(path)


def _kinematic_urdf(text: str) -> str:
    """The URDF reduced to what FK needs, with MuJoCo's compiler options for it."""
    root = ET.fromstring(text)
    if root.tag != 'robot':
        raise ValueError(f'not a URDF: root element <{root.tag}>, expected <robot>')
    for link in root.iter('link'):
        for tag in ('visual', 'collision'):
            for el in link.findall(tag):
                link.remove(el)
    for el in root.findall('mujoco'):
        root.remove(el)
    mj = ET.SubElement(root, 'mujoco')
    ET.SubElement(mj, 'compiler', fusestatic='false', discardvisual='true', boundmass='1e-6',
                  boundinertia='1e-9', balanceinertia='true')
    return ET.tostring(root, encoding='unicode')


class UrdfKinematics:
    """Forward kinematics of `ee_link` in `base_link` for the arm joints `joint_names` (in that order)."""

    def __init__(self, urdf_text: str, joint_names: Sequence[str], ee_link: str, base_link: str = ''):
        import mujoco
        self._mj = mujoco
        self.model = mujoco.MjModel.from_xml_string(_kinematic_urdf(urdf_text))
        self.data = mujoco.MjData(self.model)
        bodies = {self.model.body(i).name for i in range(self.model.nbody)}
        joints = {self.model.joint(i).name for i in range(self.model.njnt)}
        missing = [j for j in joint_names if j not in joints]
        if missing:
            raise ValueError(f'robot description has no joints {missing} (it has {sorted(joints)})')
        if ee_link not in bodies:
            raise ValueError(f'robot description has no link {ee_link!r} (ee_link; links: {sorted(bodies - {"world"})})')
        if base_link and base_link not in bodies:
            raise ValueError(f'robot description has no link {base_link!r} (base_frame)')
        self.joint_names = tuple(joint_names)
        self._qadr = np.array([self.model.jnt_qposadr[self.model.joint(j).id] for j in joint_names])
        self._ee = self.model.body(ee_link).id
        self._base = self.model.body(base_link).id if base_link else 0
        self.lower = np.array([self.model.jnt_range[self.model.joint(j).id][0] for j in joint_names])
        self.upper = np.array([self.model.jnt_range[self.model.joint(j).id][1] for j in joint_names])

    @classmethod
    def from_file(cls, path: str, joint_names: Sequence[str], ee_link: str, base_link: str = ''):
        with open(resolve_path(path)) as f:
            return cls(f.read(), joint_names, ee_link, base_link)

    def ee_position(self, q: np.ndarray) -> np.ndarray:
        """Position [m] of the end-effector link in the base link for arm joint positions q [rad]."""
        q = np.asarray(q, np.float64).reshape(-1)
        if q.shape != self._qadr.shape:
            raise ValueError(f'ee_position: {q.size} joint positions for {self._qadr.size} joints')
        self.data.qpos[:] = self.model.qpos0
        self.data.qpos[self._qadr] = q
        self._mj.mj_kinematics(self.model, self.data)
        p = self.data.xpos[self._ee] - self.data.xpos[self._base]
        return self.data.xmat[self._base].reshape(3, 3).T @ p


class EndEffector:
    """Where the end effector is, and why it is unknown when it is.

    `fk`: a UrdfKinematics (the description is the source; the pose topic is then ignored) or None (the topic
    is the source). Times are the caller's clock (the node clock, sim time in the sim graph)."""

    def __init__(self, fk: Optional[UrdfKinematics], base_frame: str, staleness_s: float):
        self.fk = fk
        self.base_frame = base_frame
        self.staleness_s = staleness_s
        self._pose: Optional[tuple[np.ndarray, float]] = None   # (position, receive time)

    @property
    def source(self) -> str:
        return 'description' if self.fk is not None else 'topic'

    def on_pose(self, position: np.ndarray, frame: str, now: float) -> Optional[str]:
        """A pose from the topic; returns a drop reason when it cannot be used (wrong frame, non-finite)."""
        if frame != self.base_frame:
            return 'wrong frame'
        p = np.asarray(position, np.float64)
        if p.shape != (3,) or not np.isfinite(p).all():
            return 'non-finite'
        self._pose = (p, now)
        return None

    def position(self, q: Optional[np.ndarray], now: float) -> tuple[Optional[np.ndarray], str]:
        """(position in the base frame, '') or (None, why it is unknown). `q`: the newest sane joint state."""
        if self.fk is not None:
            if q is None:
                return None, 'no sane joint state for forward kinematics'
            return self.fk.ee_position(q), ''
        if self._pose is None:
            return None, f'no end-effector pose on the topic (frame {self.base_frame}) and no robot_description_file'
        age = now - self._pose[1]
        if age > self.staleness_s:
            return None, (f'end-effector pose is {age:.2f} s old (> staleness_s {self.staleness_s}) and no '
                          f'robot_description_file')
        return self._pose[0], ''

    def target_position(self, q_target: np.ndarray) -> Optional[np.ndarray]:
        """Where a joint target puts the end effector; None without a description (only measured poses then)."""
        return None if self.fk is None else self.fk.ee_position(q_target)
