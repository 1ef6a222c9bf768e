import sys

from platypus_ray.cli import main

sys.exit(main())
