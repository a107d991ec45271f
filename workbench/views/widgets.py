"""Widgets that compose the plot functions (needs ipywidgets).

Each explorer holds only UI state (the control values) and the data it was given; on
every change it calls a plot function, renders the figure to PNG and shows it in an
`ipywidgets.Image`. Displayed, it also offers that PNG as a static `image/png`
fallback, so a notebook saved or exported without a widget manager still shows the
current plot; `save_png(path)` writes it to a file.

    TouchExplorer(prof)          tensor kind, layer, forward pass, layer of truth
    OpCostExplorer(prof)         group by, phase, top N; plot + table
    SparsityExplorer(model)      tensor, threshold (weights)
    ActivationExplorer(acts)     threshold, which activation, relative (FFN activations)
    LoadExplorer("smollm2")      strategy, cold / warm, threads: runs a load, shows residency
    GenerationWidget(model)      streams tokens, updates a per-op table live
    Progress("label")            a progress bar usable as a `progress(done, total)` callback
"""

from __future__ import annotations

import base64
import html
import time

import ipywidgets as W

from ..instrument import analysis
from .style import fig_png, figure_of, tensor_kind

_STATE_CLASS = "wb-state"  # the status line carries data-state="..." (tests wait on it)


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


class Explorer:
    """Controls, the current plot as a PNG image, and a status line."""

    title = ""

    def __init__(self, controls: dict, dpi: int = 80):
        """controls: name -> ipywidget; each change redraws."""
        self.dpi = dpi
        self.controls = controls
        self.image = W.Image(format="png", layout=W.Layout(max_width="100%", height="auto"))
        self.status = W.HTML()
        self.widget = W.VBox([W.HTML(f"<b>{html.escape(self.title)}</b>"), *self._rows(list(controls.values())),
                              self.image, self.status])
        for c in controls.values():
            c.observe(self._changed, names="value")
        self.render()

    @staticmethod
    def _rows(controls: list) -> list:
        rows, row = [], []
        for c in controls:
            row.append(c)
            if len(row) == 3:
                rows.append(W.HBox(row))
                row = []
        if row:
            rows.append(W.HBox(row))
        return rows

    # subclasses: draw() returns the Axes of a plot function; state() the control values
    def draw(self):
        raise NotImplementedError

    def state(self) -> str:
        return ";".join(f"{k}={c.value}" for k, c in self.controls.items())

    def _changed(self, _change=None) -> None:
        self.render()

    def render(self) -> None:
        t0 = time.perf_counter()
        try:
            fig = figure_of(self.draw())
            try:
                png = fig_png(fig, self.dpi)
            finally:
                _close(fig)
        except Exception as e:  # show the problem where the plot would be, keep the controls alive
            self.status.value = (f"<span class='{_STATE_CLASS}' data-state='error'>"
                                 f"cannot draw this view: {html.escape(str(e))}</span>")
            return
        self.image.value = png  # the image first: once the status says N, the plot for N is shown
        self.status.value = (f"<span class='{_STATE_CLASS}' data-state='{html.escape(self.state(), quote=True)}' "
                             f"style='color:#777;font-size:80%'>drawn in {time.perf_counter() - t0:.2f} s</span>")

    def png(self) -> bytes:
        return bytes(self.image.value)

    def save_png(self, path) -> None:
        from ..atomic import write_bytes

        write_bytes(path, self.png())

    def _repr_mimebundle_(self, **kw):
        bundle = self.widget._repr_mimebundle_(**kw) or {}
        if isinstance(bundle, tuple):
            bundle = bundle[0]
        bundle = dict(bundle)
        if self.image.value:
            bundle["image/png"] = base64.b64encode(self.png()).decode("ascii")
        return bundle


class TouchExplorer(Explorer):
    """Which weights a forward pass touched: pick tensor kind, layer, forward pass and the
    layer of truth (logical / mapped / cached, or all three side by side)."""

    title = "Touch map explorer: which pages of which tensors a forward pass touched"

    def __init__(self, profile, **kw):
        from .cost import passes

        self.profile = profile
        names = sorted(profile.tensors, key=lambda n: profile.tensors[n]["offset"])
        kinds = list(dict.fromkeys(tensor_kind(n) for n in names))
        n_layer = profile.meta.get("model", {}).get("n_layer") or 0
        n_pass = len(passes(profile.events))
        has_res = bool((profile.residency or {}).get("samples"))
        self.kind = W.Dropdown(options=["all"] + kinds, value="all", description="tensor")
        self.layer = W.Dropdown(options=[("all", -1)] + [(str(i), i) for i in range(n_layer)], value=-1,
                                description="layer")
        self.whole = W.Checkbox(value=True, description="whole run", indent=False)
        self.token = W.IntSlider(value=0, min=0, max=max(n_pass - 1, 0), description="pass",
                                 tooltip="forward pass: 0 = prefill, 1.. = decode steps")
        self.truth = W.ToggleButtons(options=(["logical", "mapped", "cached", "all three"] if has_res else ["logical"]),
                                     value="logical", description="layer of truth")
        self.new = W.Checkbox(value=False, description="only pages new in this span", indent=False)
        super().__init__({"kind": self.kind, "layer": self.layer, "whole": self.whole, "pass": self.token,
                          "truth": self.truth, "new": self.new}, **kw)

    def span(self):
        return None if self.whole.value else self.token.value

    def draw(self):
        from .touch import plot_touch_layers, plot_touch_map, tensor_filter

        kind = None if self.kind.value == "all" else self.kind.value
        layer = None if self.layer.value < 0 else self.layer.value
        if layer is not None and kind is not None and self.kind.value in ("token_embd", "output_norm", "output"):
            layer = None
        flt = tensor_filter(kind, layer)
        if self.truth.value == "all three":
            return plot_touch_layers(self.profile, self.span(), tensors=flt, new=self.new.value)
        return plot_touch_map(self.profile, self.truth.value, self.span(), tensors=flt, new=self.new.value)


def _html_table(rows: list[dict], limit: int | None = None, cls: str = "wb-table") -> str:
    rows = rows[:limit] if limit else rows
    if not rows:
        return "<i>(no rows)</i>"
    cols = list(rows[0])
    fmt = lambda v: (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}") if isinstance(v, float) else html.escape(str(v))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r[c])}</td>" for c in cols) + "</tr>" for r in rows)
    return (f"<table class='{cls}' style='font-size:80%;border-collapse:collapse' border='1'>"
            f"<tr>{head}</tr>{body}</table>")


class OpCostExplorer(Explorer):
    """Where the time goes: group by op kind / layer / tensor / backend, by phase, top N."""

    title = "Op cost explorer: time per group of ops"

    def __init__(self, profile, **kw):
        self.profile = profile
        self.by = W.Dropdown(options=["op", "layer", "tensor", "backend"], value="op", description="group by")
        self.phase = W.ToggleButtons(options=["both", "prefill", "decode"], value="both", description="phase")
        self.top = W.IntSlider(value=8, min=2, max=40, description="top N")
        self.table = W.HTML()
        super().__init__({"by": self.by, "phase": self.phase, "top": self.top}, **kw)
        self.widget.children = (*self.widget.children, self.table)

    def draw(self):
        from .cost import plot_op_cost

        phase = None if self.phase.value == "both" else self.phase.value
        rows = analysis.table(self.profile.events, self.by.value, phase)
        self.table.value = _html_table(rows, self.top.value)
        return plot_op_cost(self.profile, by=self.by.value, phase=phase, top=self.top.value)


class SparsityExplorer(Explorer):
    """Weight sparsity of one tensor: |w| histogram and block map for a threshold."""

    title = "Weight sparsity explorer: how many weights are near zero"

    def __init__(self, model, tensor: str | None = None, threshold: float = 0.01, **kw):
        self.model = model
        names = [t.name for t in model.weights.tensors() if t.rows > 1]
        default = next((n for n in names if "ffn_gate" in n), names[0])
        self.tensor = W.Dropdown(options=names, value=tensor or default, description="tensor")
        self.threshold = W.FloatLogSlider(value=threshold, base=10, min=-4, max=0, step=0.25, description="|w| <",
                                          readout_format=".4f")
        super().__init__({"tensor": self.tensor, "threshold": self.threshold}, **kw)

    def draw(self):
        from .sparsity import plot_weight_overview

        t = self.model.gguf.tensors[self.tensor.value]
        return plot_weight_overview(t, self.threshold.value)


class ActivationExplorer(Explorer):
    """FFN activation sparsity (from capture_ffn_activations): threshold, which, relative."""

    title = "Activation sparsity explorer: share of near-zero FFN activations per layer and token"

    def __init__(self, acts, threshold: float = 0.05, **kw):
        self.acts = acts
        self.threshold = W.FloatLogSlider(value=threshold, base=10, min=-4, max=0, step=0.25, description="|a| <",
                                          readout_format=".4f")
        self.which = W.ToggleButtons(options=[("silu(gate)", "gate"), ("silu(gate) x up", "product")], value="gate",
                                     description="activation")
        self.relative = W.Checkbox(value=False, description="threshold relative to the largest |a|", indent=False)
        super().__init__({"threshold": self.threshold, "which": self.which, "relative": self.relative}, **kw)

    def draw(self):
        from .sparsity import plot_activation_sparsity

        return plot_activation_sparsity(self.acts, self.threshold.value, self.which.value, self.relative.value)


class Progress:
    """A progress bar that is also a `progress(done, total)` callback.

        acts = capture_ffn_activations(m, "Hi", n=8, progress=Progress("capturing"))"""

    def __init__(self, description: str = "", total: int = 1, show: bool = True):
        self.bar = W.IntProgress(value=0, min=0, max=max(total, 1), description=description,
                                 style={"description_width": "initial"})
        self.label = W.Label()
        self.widget = W.HBox([self.bar, self.label])
        self.t0 = time.perf_counter()
        if show:
            from IPython.display import display

            display(self.widget)

    def __call__(self, done: int, total: int) -> None:
        self.bar.max = max(total, 1)
        self.bar.value = min(done, self.bar.max)
        self.label.value = f"{done} / {total}, {time.perf_counter() - self.t0:.1f} s"
        self.bar.bar_style = "success" if done >= total else ""


class LoadExplorer(Explorer):
    """Run one load (in a fresh process) with the chosen strategy, cache state and
    threads, and show its per-tensor timeline and residency."""

    title = "Load explorer: what a load strategy does to the page cache and memory"

    def __init__(self, model: str = "smollm2", **kw):
        from ..loading import STRATEGIES

        self.model = model
        self.report = None  # the last run's report (shown; replaced by the next run)
        self.strategy = W.Dropdown(options=list(STRATEGIES), value="mmap+touch", description="strategy")
        self.cache = W.ToggleButtons(options=["cold", "warm"], value="cold", description="page cache")
        self.threads = W.IntSlider(value=2, min=1, max=4, description="threads")
        self.run_button = W.Button(description="Run load", button_style="primary", icon="play")
        self.progress = W.IntProgress(value=0, min=0, max=2, description="idle")
        self.run_button.on_click(lambda _b: self.run())
        super().__init__({"strategy": self.strategy, "cache": self.cache, "threads": self.threads}, **kw)
        self.widget.children = (*self.widget.children[:-2], W.HBox([self.run_button, self.progress]),
                                *self.widget.children[-2:])

    def _changed(self, _change=None) -> None:  # a new choice needs a new run: nothing to redraw
        self.progress.description = "press Run"

    def state(self) -> str:
        r = self.report
        return "none" if r is None else f"strategy={r['strategy']};cold={r['cold']};threads={r['threads']}"

    def run(self) -> dict:
        from ..loading import load_bench

        self.progress.value, self.progress.description, self.progress.bar_style = 1, "loading...", "info"
        try:
            rep = load_bench(self.model, strategies=[self.strategy.value], threads=(self.threads.value,),
                             cold=self.cache.value == "cold", warm=self.cache.value == "warm", log=lambda *_: None)
        except Exception as e:
            self.progress.description, self.progress.bar_style = "failed", "danger"
            self.status.value = f"<span class='{_STATE_CLASS}' data-state='error'>{html.escape(str(e))}</span>"
            raise
        self.report = rep["runs"][0]
        self.progress.value, self.progress.description, self.progress.bar_style = 2, "done", "success"
        self.render()
        return self.report

    def draw(self):
        import matplotlib.pyplot as plt

        from .loadtime import plot_load_timeline

        if self.report is None:
            fig, ax = plt.subplots(figsize=(9, 1.2))
            ax.text(0.5, 0.5, "choose a strategy, cache state and threads, then press 'Run load'", ha="center",
                    va="center")
            ax.set_axis_off()
            return ax
        return plot_load_timeline(self.report)


class GenerationWidget:
    """Type a prompt, press Generate: tokens stream in while a per-op table (time, share,
    GB/s, faults) updates after every token. Holds only UI state; the model is yours."""

    def __init__(self, model, prompt: str = "The capital of France is", n: int = 16):
        self.model = model
        self.prompt = W.Text(value=prompt, description="prompt", layout=W.Layout(width="60%"))
        self.n = W.IntSlider(value=n, min=1, max=128, description="tokens")
        self.by = W.Dropdown(options=["op", "layer", "tensor"], value="op", description="table by")
        self.button = W.Button(description="Generate", button_style="primary", icon="play")
        self.progress = W.IntProgress(value=0, min=0, max=n, description="tokens")
        self.text = W.HTML()
        self.table = W.HTML()
        self.button.on_click(lambda _b: self.run())
        self.widget = W.VBox([W.HTML("<b>Generation with a live per-op profile</b>"),
                              W.HBox([self.prompt, self.n]), W.HBox([self.by, self.button, self.progress]),
                              self.text, self.table])

    def run(self) -> str:
        from ..generate import Generation, stream
        from ..instrument.recorder import record

        self.button.disabled = True
        self.progress.max, self.progress.value, self.progress.bar_style = self.n.value, 0, "info"
        out, done = [], []
        res = Generation(self.model.tokenizer.encode(self.prompt.value))
        try:
            with record(self.model, touch=False) as rec:
                for piece in stream(self.model, self.prompt.value, n=self.n.value, result=res):
                    out.append(piece)
                    done.extend(e.to_dict() for e in rec.events[len(done):])
                    self.progress.value = len(res.ids)
                    self._show("".join(out), done, res, running=True)
                done.extend(e.to_dict() for e in rec.events[len(done):])
        finally:
            self.button.disabled = False
        self.progress.bar_style = "success"
        self._show("".join(out), done, res, running=False)
        return "".join(out)

    def _show(self, text, events, res, running: bool) -> None:
        self.text.value = (f"<pre style='white-space:pre-wrap'><b>{html.escape(self.prompt.value)}</b>"
                           f"{html.escape(text)}{' ...' if running else ''}</pre>")
        rows = analysis.table(events, self.by.value)
        ms = sum(e["wall_ns"] for e in events) / 1e6
        info = (f"{len(res.ids)} tokens, {len(events)} ops, {ms:.0f} ms in ops"
                + ("" if running else f"; prompt {res.prompt_tps:.1f} tok/s, decode {res.decode_tps:.1f} tok/s"))
        self.table.value = (f"<div class='{_STATE_CLASS}' data-state='{'running' if running else 'done'}:"
                            f"{len(res.ids)}'>{info}</div>" + _html_table(rows, 12))

    def _repr_mimebundle_(self, **kw):
        b = self.widget._repr_mimebundle_(**kw)
        return b[0] if isinstance(b, tuple) else b
