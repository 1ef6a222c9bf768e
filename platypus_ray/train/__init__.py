"""Train stage: LoRA on Ray Train with DeepSpeed ZeRO-3 and PEFT."""

from platypus_ray.train.config import TrainConfig

__all__ = ["TrainConfig", "run"]


def run(cfg: TrainConfig, callbacks: list | None = None, data=None):
    """Run the train stage; see :func:`platypus_ray.train.stage.run`."""
    from platypus_ray.train.stage import run as _run

    return _run(cfg, callbacks=callbacks, data=data)
