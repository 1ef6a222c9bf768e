"""`ray job submit` entry point for the refine stage.

    ray job submit --working-dir . -- \
        python jobs/refine.py --config jobs/configs/demo-refine.yaml [--set key=value ...]
"""

import sys

from platypus_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["refine", *sys.argv[1:]]))
