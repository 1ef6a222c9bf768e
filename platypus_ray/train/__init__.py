"""Train stage: LoRA on Ray Train with DeepSpeed ZeRO-3 and PEFT (``prepare`` then ``fit``)."""

from platypus_ray.train.config import TrainConfig

__all__ = ["TrainConfig", "fit", "prepare", "run"]


def run(cfg: TrainConfig):
    """Run the train stage; see :func:`platypus_ray.train.stage.run`."""
    from platypus_ray.train.stage import run as _run

    return _run(cfg)


def prepare(cfg: TrainConfig, **kwargs):
    """Check and plan a training job; see :func:`platypus_ray.train.stage.prepare`."""
    from platypus_ray.train.stage import prepare as _prepare

    return _prepare(cfg, **kwargs)


def fit(job, callbacks: list | None = None):
    """Train a prepared job; see :func:`platypus_ray.train.stage.fit`."""
    from platypus_ray.train.stage import fit as _fit

    return _fit(job, callbacks=callbacks)
