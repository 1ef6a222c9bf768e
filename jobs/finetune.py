"""`ray job submit` entry point for the train stage (LoRA + DeepSpeed ZeRO-3 on Ray Train).

    ray job submit --working-dir . -- \
        python jobs/finetune.py --config jobs/configs/platypus2-13b.yaml [--set key=value ...]
"""

import sys

from platypus_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
