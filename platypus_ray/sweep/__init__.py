"""Sweep stage: Ray Tune over any train-config keys (`sweep.space`), each trial the train stage's prepare + fit."""

from platypus_ray.sweep.config import SweepConfig

__all__ = ["SweepConfig", "run"]


def run(cfg: SweepConfig):
    """Run the sweep stage; see :func:`platypus_ray.sweep.stage.run`."""
    from platypus_ray.sweep.stage import run as _run

    return _run(cfg)
