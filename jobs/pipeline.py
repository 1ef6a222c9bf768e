"""`ray job submit` entry point for the whole recipe: refine -> train -> merge.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/pipeline.py --config jobs/configs/demo.yaml [--set key=value ...]
"""

import sys

from platypus_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
