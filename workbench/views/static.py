"""Static PNGs: every view renders to a file, so a saved profile, a CI log or a notebook
opened without a kernel still shows it.

    save_profile_plots(prof, "profiles/demo")   -> [op_cost.png, layer_cost.png, timeline.png, ...]
    save_png(plot_op_cost(prof), "cost.png")
"""

from __future__ import annotations

import os
from pathlib import Path

from .style import figure_of


def save_png(ax_or_axes, path: str | os.PathLike, dpi: int = 100, close: bool = True) -> Path:
    """Write the figure an Axes (or list of Axes) belongs to as a PNG, atomically."""
    from ..atomic import atomic_path

    fig = figure_of(ax_or_axes)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path


# every file profile_views may name: a saved profile owns them (atomic_dir drops an old one
# the new set does not draw)
VIEW_FILES = ("op_cost.png", "layer_cost.png", "timeline.png", "touch_map.png", "touch_layers.png",
              "fault_estimates.png")


def profile_views(profile) -> list[tuple[str, callable]]:
    """The key views of a profile as (file name, function drawing it); only those the
    profile has data for."""
    from . import cost, touch

    out = [("op_cost.png", lambda: cost.plot_op_cost(profile)),
           ("layer_cost.png", lambda: cost.plot_op_cost(profile, by="layer")),
           ("timeline.png", lambda: cost.plot_token_timeline(profile))]
    recorded_rows = (profile.meta or {}).get("settings", {}).get("touch", True)  # touch=False: rows not kept
    has_touch = recorded_rows and profile.tensors and any(e.get("tensor") for e in profile.events)
    if has_touch:
        out.append(("touch_map.png", lambda: touch.plot_touch_map(profile, "logical")))
    if has_touch and (profile.residency or {}).get("samples"):
        out += [("touch_layers.png", lambda: touch.plot_touch_layers(profile)),
                ("fault_estimates.png", lambda: touch.plot_fault_estimates(profile))]
    return out


def save_profile_plots(profile, out_dir: str | os.PathLike, dpi: int = 100) -> list[Path]:
    """Write the key PNGs of a profile (op cost, cost per layer, timeline of one forward
    pass, touch map, touch layers, fault estimates) into `out_dir`; returns their paths.
    Each figure is closed after saving (nothing is left for a notebook to show twice)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not profile.events:
        return []
    return [save_png(draw(), out / name, dpi=dpi) for name, draw in profile_views(profile)]
