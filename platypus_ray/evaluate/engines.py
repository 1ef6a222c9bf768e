"""Which engine generates (``inference.engine``): vLLM on GPUs when it is installed, else transformers.

Only ``generate_until`` requests move: log-likelihoods (rolling ones too) stay on the transformers
pool, whose numbers are the ones the parity tests pin. ``auto`` never fails: it picks vLLM only when
every condition holds. ``vllm`` asked for explicitly and impossible is a config or environment
error naming the key, raised in preflight where the device is known (``inference.device: cpu`` or
``cuda``) and again once ``auto`` devices are resolved on the cluster.
"""

from __future__ import annotations

import importlib.util
import logging

from platypus_ray.core.errors import EnvironmentFailure, UserError
from platypus_ray.evaluate.config import ModelRef

logger = logging.getLogger(__name__)

KEY = "evaluate.inference.engine"


def vllm_installed() -> bool:
    """Whether ``vllm`` is importable here (the driver; the GPU nodes are assumed to run its image)."""
    return importlib.util.find_spec("vllm") is not None


def choose_engine(requested: str, device: str, has_vllm: bool, models: list[ModelRef]) -> str:
    """``transformers`` or ``vllm`` for the generation requests of ``models`` on ``device`` (``cpu``,
    ``cuda``; ``auto`` counts as a possible GPU); an explicit ``vllm`` that cannot run raises."""
    adapters = [m.display_name for m in models if m.adapter]
    if requested == "transformers":
        return "transformers"
    if requested == "auto":
        if has_vllm and device == "cuda" and adapters:
            logger.info("evaluate: generating with transformers: vLLM here loads no LoRA adapter (%s)", adapters)
        return "vllm" if has_vllm and device == "cuda" and not adapters else "transformers"
    if not has_vllm:
        raise EnvironmentFailure(
            f"{KEY}: vllm, but vllm is not installed here (the driver); install it in the GPU nodes' image "
            "(pip install vllm), or set inference.engine: auto or transformers"
        )
    if device == "cpu":
        raise UserError(
            f"{KEY}: vllm needs GPUs, but inference.device is cpu (set explicitly, or auto on a cluster "
            "without GPUs); run on GPU nodes with inference.device: auto or cuda, or set inference.engine: transformers"
        )
    if adapters:
        raise UserError(
            f"{KEY}: vllm loads no LoRA adapter here ({', '.join(adapters)}); merge it first (platypus-ray merge) "
            "and give the merged folder as name_or_path, or set inference.engine: transformers"
        )
    return "vllm"
