"""Render the camera views shown in the docs: docs/sim_<task>_<camera>.png.

    python poco_sim/tools/render_docs_images.py [--out docs] [--size 256]

Each task is rolled out with the noiseless expert from a fixed seed and captured at a moment where the
gripper is near the object (pick_cube: closing on the cube; peg_insert: peg just above the hole), so the
wrist view shows the fingers and the object. Same renderer settings as the env observations.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from poco_sim.envs import make_env
from poco_sim.expert import ScriptedExpert

# Expert phase at which each task's picture is taken.
CAPTURE_PHASE = {'pick_cube': 'grasp', 'peg_insert': 'insert'}


def capture(task: str, size: int, seed: int) -> dict[str, np.ndarray]:
    env = make_env(task, 'pixels', image_size=size, seed=seed)
    try:
        expert = ScriptedExpert(env)
        obs, info = env.reset(seed=seed)
        for _ in range(env.max_steps):
            obs, _, term, trunc, info = env.step(expert.act(obs, info))
            if expert.phase == CAPTURE_PHASE[task] or term or trunc:
                break
        return {cam: obs[cam] for cam in env.cameras}
    finally:
        env.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default=str(Path(__file__).resolve().parents[2] / 'docs'))
    p.add_argument('--size', type=int, default=256)
    p.add_argument('--seed', type=int, default=7)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for task in ('pick_cube', 'peg_insert'):
        for cam, img in capture(task, args.size, args.seed).items():
            path = out / f'sim_{task}_{cam}.png'
            Image.fromarray(img).save(path, optimize=True)
            print(path)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
