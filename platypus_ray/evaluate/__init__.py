"""Evaluate stage: lm-evaluation-harness tasks and held-out loss, scored as Ray Data batch inference."""

from platypus_ray.evaluate.config import EvaluateConfig

__all__ = ["EvaluateConfig", "run"]


def run(cfg: EvaluateConfig):
    """Run the evaluate stage; see :func:`platypus_ray.evaluate.stage.run`."""
    from platypus_ray.evaluate.stage import run as _run

    return _run(cfg)
