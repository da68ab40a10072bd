"""Make the repository's lagm_ray importable when a script runs from a checkout that is not installed
(for example the working directory `ray job submit --working-dir .` uploads)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
