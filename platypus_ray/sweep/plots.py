"""Matplotlib figures to PNG bytes, headless (the Agg backend: no display on a cluster node)."""

from __future__ import annotations

import io


def new_figure(figsize: tuple[float, float]):
    """A (figure, axes) pair on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def png_bytes(fig, dpi: int = 100) -> bytes:
    """The figure as PNG (tight layout); the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()
