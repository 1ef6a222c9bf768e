"""`ray job submit` entry point for the evaluate stage (benchmark accuracy and held-out loss).

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/evaluate.py --config jobs/configs/demo-evaluate.yaml [--set key=value ...]
"""

import sys

from platypus_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
