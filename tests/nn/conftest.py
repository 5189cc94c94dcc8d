import sys
from pathlib import Path

# the module tests share their problems and comparison helpers (tests/o3/o3_cases.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "o3"))

from o3_cases import e3nn_modules_unscripted  # noqa: E402, F401  (autouse fixture)
