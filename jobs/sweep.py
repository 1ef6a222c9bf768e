"""`ray job submit` entry point for the sweep stage (Ray Tune over LoRA settings).

    ray job submit --working-dir . -- \
        python jobs/sweep.py --config jobs/configs/tiny-sweep.yaml [--resume] [--set key=value ...]
"""

import sys

from platypus_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
