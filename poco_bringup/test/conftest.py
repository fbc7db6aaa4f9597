# Tests here share `_bringup_helpers.py`. pytest's default import mode (prepend) already puts this folder on
# sys.path (the test folders have no __init__.py); this keeps the helpers importable under
# `--import-mode=importlib` too, which does not.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
