"""Refine stage: curate an instruction set with Ray Data (validate, dedup, decontaminate)."""

from platypus_ray.refine.config import RefineConfig

__all__ = ["RefineConfig", "run"]


def run(cfg: RefineConfig):
    """Run the refine stage; see :func:`platypus_ray.refine.stage.run`."""
    from platypus_ray.refine.stage import run as _run

    return _run(cfg)
