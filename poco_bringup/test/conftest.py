# Tests here share `_bringup_helpers.py`; pytest runs with --import-mode=importlib (several packages have a
# test/ folder), which does not put this folder on sys.path by itself.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
