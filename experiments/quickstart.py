"""LAGM against supervised-only on the embedded faces with 2 and 10 labelled images.

    python experiments/quickstart.py                 # one seed (what `lagm quickstart` runs)
    python experiments/quickstart.py --seeds 0,1,2   # the README's 3-seed table
    python experiments/quickstart.py --quick         # a smoke test of the whole path
"""

import argparse
from pathlib import Path

from lagm_ray.quickstart import run_quickstart

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--quick", action="store_true", help="a much shorter budget")
    ap.add_argument("--out", type=Path, default=Path("quickstart_results.json"))
    ap.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    ap.add_argument("--parallel", type=int, default=2, help="trainings at a time, one torch thread each")
    args = ap.parse_args()
    run_quickstart(quick=args.quick, seeds=[int(s) for s in args.seeds.split(",")], out=args.out,
                   track=not args.no_track, parallel=args.parallel)
