"""Ray job entry point: run one rmm command (run, extract, train, tune) on the cluster this job runs on.

Submitted by ``rmm submit`` or by hand::

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/run_stage.py run configs/quickstart.yaml
"""

from __future__ import annotations

import sys

from rmm.cli import main

if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python jobs/run_stage.py {run,extract,train,tune} CONFIG [--set key=value ...]")
    sys.exit(main([*sys.argv[1:], "--ray-address", "auto"]))
