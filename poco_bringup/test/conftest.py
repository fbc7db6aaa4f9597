# Tests here share `_bringup_helpers.py`. pytest's default import mode (prepend) already puts this folder on
# sys.path (the test folders have no __init__.py); this keeps the helpers importable under
# `--import-mode=importlib` too, which does not.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import os  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _weights_key_home(tmp_path_factory, monkeypatch):
    """The real graph refuses to start without the weights key its real.yaml names (~/.poco/weights.key): tests
    run with HOME at a folder holding one (0600), made once per session. test_weights_key_required checks the
    keyless case with its own empty HOME."""
    home = tmp_path_factory.getbasetemp() / 'home-with-key'
    key = home / '.poco' / 'weights.key'
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
    monkeypatch.setenv('HOME', str(home))
    return key
