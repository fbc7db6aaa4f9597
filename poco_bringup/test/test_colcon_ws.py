"""`colcon build && colcon test` in a standard ws/src/poco-ros layout (issue 12, item 5), through
scripts/colcon_ws_check.sh: a copy of this checkout in a temporary ws/src, the workspace's colcon, `colcon test`
of one package with a fast subset, `colcon test-result`. It must report > 0 pytest tests, none failed, and the
package imported from the temporary workspace (not from this checkout's install/).

Here poco_msgs comes from this checkout's install/ as an underlay (its rosidl build takes minutes on 2 busy
cores); .ci/run runs the script once more building every package from scratch."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from _bringup_helpers import REPO, needs_repo_setup, private_domain, ros_env

SCRIPT = REPO / 'scripts' / 'colcon_ws_check.sh'


@needs_repo_setup   # it makes the ws/src copy from this checkout's setup; in that copy it has nothing to copy from
def test_colcon_test_runs_pytest_in_a_ws_src_layout():
    domain, _lock = private_domain()
    r = subprocess.run(['bash', str(SCRIPT), '--underlay-msgs', '--test', 'poco_sim:envs'],
                       capture_output=True, text=True, timeout=900, env=ros_env(domain))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    ws = re.search(r'workspace (\S+/ws) ', out).group(1)
    assert re.search(rf'poco_sim imported from {re.escape(ws)}/', out), out[-3000:]
    assert f'{REPO}/install/poco_sim' not in out
    n = int(re.search(r'poco_sim: (\d+) tests \(pytest\)', out).group(1))
    assert n > 0, out[-3000:]
    assert re.search(rf'Summary: {n} tests, 0 errors, 0 failures', out), out[-3000:]
    assert 'rootdir: ' + ws + '/src/poco-ros/poco_sim' in out, out[-3000:]   # pytest ran in the ws copy
    assert not Path(ws).exists()                                              # cleaned up

