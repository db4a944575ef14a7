"""What the labs call in their first cells: environment setup, the lab's size, Colab detection.

A lab runs at one of three sizes (:data:`SIZES`):

* ``smoke`` — seconds to a minute, the ``tiny`` model: CI, and a first look that everything runs;
* ``standard`` — meaningful curves on a CPU laptop in a few minutes (``smollm2-135m``, few steps);
* ``full`` — the workshop size, meant for a GPU.

A lab's parameters cell holds every knob (``SMOKE``, ``SIZE``, ``MODEL``, sizes with ``None``
meaning "pick from the size", seeds); the next cell calls :func:`setup` and :func:`pick`::

    LAB = setup(SMOKE, size=SIZE, seed=SEED)
    STEPS = pick(STEPS, smoke=20, standard=60, full=300)
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
_SAME_AS_SMOKE: Any = object()  # pick(..., standard=) not given

SIZES = ("smoke", "standard", "full")
REPORT_RENDERER = "plotly_mimetype"  # labkit.report turns these outputs into offline HTML, plotly.js once


def in_colab() -> bool:
    """True inside Google Colab (its kernel imports ``google.colab``; fastbook also checks /content)."""
    return "google.colab" in sys.modules or (
        os.path.isdir("/content") and os.environ.get("COLAB_RELEASE_TAG") is not None
    )


def in_report() -> bool:
    """True when the lab runs under ``labkit report`` (or CI), which sets ``LABKIT_REPORT=1``."""
    from labkit.panels.base import report_mode

    return report_mode()


@dataclass(frozen=True)
class LabEnv:
    """What :func:`setup` found: device, precision policy, and the mode the lab runs in."""

    smoke: bool
    device: str
    precision: str
    report: bool
    colab: bool
    seed: int
    renderer: str
    size: str = "full"  # one of SIZES; ``smoke`` is ``size == "smoke"``

    def pick(self, value: T | None, *, smoke: T, full: T, standard: Any = _SAME_AS_SMOKE) -> T:
        """``value`` if given, else the default of this lab's size (see :func:`pick`)."""
        return pick(value, smoke=smoke, full=full, standard=standard, size=self.size)

    def line(self) -> str:
        """A one-line summary of the environment (printed by :func:`setup`)."""
        import torch

        import labkit

        mode = f"{self.size} size"
        extra = " · report" if self.report else ""
        extra += " · Colab" if self.colab else ""
        gpu = ""
        if self.device == "cuda":
            gpu = f" ({torch.cuda.get_device_name(0)})"
        return (
            f"labkit {labkit.__version__} · python {platform.python_version()} · torch {torch.__version__}"
            f" · device {self.device}{gpu} · precision {self.precision} · {mode} · seed {self.seed}{extra}"
        )


_current: LabEnv | None = None


def resolve_size(smoke: bool = False, size: str | None = None) -> str:
    """The lab's size from its ``SMOKE`` and ``SIZE`` parameters (``SIZE`` wins; they must agree)."""
    if size is None:
        return "smoke" if smoke else "full"
    from labkit.errors import LabkitError

    if size not in SIZES:
        raise LabkitError(f"SIZE: must be one of {', '.join(SIZES)} (or None: from SMOKE); got {size!r}")
    if smoke and size != "smoke":
        raise LabkitError(f"SMOKE = True and SIZE = {size!r} disagree: set SIZE alone (or SMOKE alone)")
    return size


def setup(smoke: bool = False, *, size: str | None = None, seed: int = 0, language: str | None = None,
          quiet: bool = False) -> LabEnv:
    """Prepare a lab: its size, plotly renderer, device and precision (auto), seeds, language; print one line.

    * Report mode (``LABKIT_REPORT=1``): ``$PLOTLY_RENDERER`` or ``plotly_mimetype``. nbconvert
      drops that output by itself, so ``labkit report`` turns each figure's JSON into HTML with
      plotly.js inlined once per page (set ``plotly_mimetype+notebook`` instead to get HTML from the
      kernel: it also works, at the price of a 5 MB plotly.js copy in the executed notebook).
      Interactive: plotly's own choice (the mimetype in JupyterLab and VS Code, ``colab`` on Colab),
      which keeps saved notebooks small.
    * Precision: ``labkit.device.auto_precision`` — bf16 autocast where the GPU supports it, else
      fp16 with loss scaling, fp32 on CPU.
    """
    global _current
    import plotly.io as pio

    size = resolve_size(smoke, size)

    from labkit.device import auto_precision, best_device

    report = in_report()
    colab = in_colab()
    if report:
        pio.renderers.default = os.environ.get("PLOTLY_RENDERER") or REPORT_RENDERER
    renderer = pio.renderers.default
    if language is not None:
        from labkit.i18n import set_language

        set_language(language)
    seed_everything(seed)
    device = best_device()
    env = LabEnv(
        smoke=size == "smoke",
        device=device.type,
        precision=auto_precision(device),
        report=report,
        colab=colab,
        seed=seed,
        renderer=renderer,
        size=size,
    )
    _current = env
    if not quiet:
        print(env.line())
    return env


def current() -> LabEnv | None:
    """The environment from the last :func:`setup` call in this kernel."""
    return _current


def pick(value: T | None, *, smoke: T, full: T, standard: Any = _SAME_AS_SMOKE, size: str | None = None,
         is_smoke: bool | None = None) -> T:
    """Resolve a ``None`` size parameter: the ``smoke``, ``standard`` or ``full`` default.

    ``size`` defaults to the size given to the last :func:`setup` call (``is_smoke``, the older
    spelling, picks smoke or full). A parameter given no ``standard`` keeps its smoke value there.
    """
    if value is not None:
        return value
    if size is None:
        if is_smoke is not None:
            size = "smoke" if is_smoke else "full"
        else:
            size = _current.size if _current is not None else "full"
    if size == "full":
        return full
    if size == "standard" and standard is not _SAME_AS_SMOKE:
        return standard
    return smoke


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a lab's runs repeat (the engine's own seeding)."""
    from labkit.train.engine import seed_everything as seed_run

    seed_run(seed)


def takeaway(text: str) -> Any:
    """Show an experiment's one-line takeaway as a highlighted box (markdown in every front end)."""
    from IPython.display import Markdown

    return Markdown(f"> **Takeaway:** {text}")


def show(*figures: Any) -> None:
    """Display plain plotly figures with the renderer :func:`setup` chose."""
    for fig in figures:
        fig.show()


def table(rows: list[dict[str, Any]], *, floatfmt: str = ".4g") -> Any:
    """A small HTML table of dict rows (works in reports, no pandas styling needed)."""
    import html as _html

    from IPython.display import HTML

    if not rows:
        return HTML("<p>(no rows)</p>")
    cols: list[str] = []
    for row in rows:
        for key in row:
            if key not in cols:
                cols.append(key)

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return format(v, floatfmt)
        return _html.escape(str(v))

    head = "".join(f"<th>{_html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return HTML(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


RESULT_MIME = "application/vnd.labkit.result+json"


def record(name: str, value: Any) -> None:
    """Show one key result of an experiment and tag it for automated checks.

    The output carries a one-line ``text/plain`` (what readers see) and a JSON copy under
    :data:`RESULT_MIME` that :func:`read_results` collects from an executed notebook (CI asserts
    on it, so a lab's "what it shows" is tested, not just that it ran).
    """
    import json

    from IPython.display import display

    json.dumps(value, allow_nan=True)  # fail here, not in the test, if it cannot be saved
    shown = format(value, ".4g") if isinstance(value, float) else value
    display({"text/plain": f"✓ {name} = {shown}", RESULT_MIME: {"name": name, "value": value}}, raw=True)


def read_results(notebook: Any) -> dict[str, Any]:
    """Every :func:`record`-ed value of an executed notebook (a path or an nbformat node)."""
    import nbformat

    nb = notebook if isinstance(notebook, nbformat.NotebookNode) else nbformat.read(str(notebook), as_version=4)
    out: dict[str, Any] = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data") or {}
            if RESULT_MIME in data:
                item = data[RESULT_MIME]
                out[item["name"]] = item["value"]
    return out


# ---------------------------------------------------------------------------------------------
# small plotting and analysis helpers shared by the labs (no panel needed)


def curves(
    series: dict[str, Any],
    *,
    title: str = "",
    x_title: str = "step",
    y_title: str = "loss",
    log_y: bool = False,
    height: int = 380,
) -> Any:
    """One line per named series: ``{"lr=1e-3": [losses...]}`` or ``{"name": (xs, ys)}``."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, values in series.items():
        if isinstance(values, tuple) and len(values) == 2:
            xs, ys = values
        else:
            ys = list(values)
            xs = list(range(1, len(ys) + 1))
        ys = [y if y is not None and y == y and abs(y) != float("inf") else None for y in ys]
        fig.add_trace(go.Scatter(x=list(xs), y=ys, mode="lines", name=str(name)))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=height, margin={"t": 50})
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def head_maps(scores: dict[str, list[dict[str, Any]]], *, height: int = 300) -> Any:
    """Heatmaps of :func:`labkit.models.circuits.head_scores`, one row of panels per model.

    ``scores``: ``{"model name": head_scores(model)}``. Left: attention to the previous token;
    right: induction (attention to the token after the earlier occurrence). A bright cell is a
    head doing that job.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(scores)
    kinds = ("previous_token", "induction")
    fig = make_subplots(rows=len(names), cols=2, horizontal_spacing=0.12, vertical_spacing=0.5 / max(len(names), 1),
                        subplot_titles=[f"{n}: {k.replace('_', ' ')}" for n in names for k in kinds])
    for r, name in enumerate(names, start=1):
        rows = scores[name]
        layers = sorted({row["layer"] for row in rows})
        heads = sorted({row["head"] for row in rows})
        for c, kind in enumerate(kinds, start=1):
            grid = [[next(x[kind] for x in rows if x["layer"] == layer and x["head"] == head) for head in heads]
                    for layer in layers]
            fig.add_trace(go.Heatmap(z=grid, x=[f"head {h}" for h in heads], y=[f"layer {lyr}" for lyr in layers],
                                     zmin=0, zmax=1, colorscale="Viridis", showscale=(r == 1 and c == 2),
                                     text=[[f"{v:.2f}" for v in line] for line in grid], texttemplate="%{text}"),
                          row=r, col=c)
    fig.update_layout(height=height * len(names), margin={"t": 60})
    return fig


def volatility(losses: list[float]) -> float:
    """How jumpy a loss curve is: the standard deviation of step-to-step changes.

    (A smooth curve can still fall fast; volatility looks only at the noise around the trend.)
    """
    import statistics

    values = [x for x in losses if x is not None and x == x and abs(x) != float("inf")]
    if len(values) < 3:
        return float("nan")
    diffs = [b - a for a, b in zip(values, values[1:])]
    return float(statistics.pstdev(diffs))


def own_loop(
    model: Any,
    tokenizer: Any,
    records: list[dict[str, Any]],
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    seq_len: int = 128,
    seed: int = 0,
    callback: Any = None,
) -> list[float]:
    """The whole fine-tuning loop in a dozen lines: batch → :func:`labkit.train.train_step` (forward → loss → backward → update).

    Full fine-tuning with AdamW on instruction ``records`` (prompt tokens masked out of the loss),
    in place on ``model``. Returns the loss of every step. The step is the very function the
    engine calls (lab 00 prints its source); :func:`labkit.train.train` adds precision policies,
    accumulation, LoRA and the run store, and takes your own records too
    (``TrainConfig(train_file=...)``).
    """
    import torch

    from labkit.tasks import collate, tokenize_for_training
    from labkit.train.step import StepSettings, scaler_for, train_step

    features = tokenize_for_training(tokenizer, records, seq_len)
    if not features:
        raise ValueError("records: no example fits in seq_len; got an empty training set")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    device = next(model.parameters()).device
    settings = StepSettings(scaler=scaler_for(device, enabled=False), max_grad_norm=None)  # fp32, no clipping
    model.train()
    losses: list[float] = []
    order: list[int] = []
    for step in range(steps):
        if len(order) < batch_size:  # a fresh shuffle per epoch
            order += torch.randperm(len(features), generator=generator).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        batch = collate([features[i] for i in idx], tokenizer.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        result = train_step(model, [batch], optimizer, settings)  # forward → loss → backward → update
        losses.append(result.loss)
        if callback is not None:
            callback({"step": step + 1, "loss": losses[-1]})
    model.eval()
    return losses


def next_token_loop(
    model: Any,
    token_ids: Any,
    *,
    steps: int,
    batch_size: int = 8,
    seq_len: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Pretraining in miniature: random windows of ``token_ids``, every position predicts the next.

    The same objective labkit's ``pretrain_tiny`` uses, without its corpus preparation, so a lab
    can show a fresh model's loss falling from ln(vocab) in seconds. Returns the loss per step.
    """
    import torch

    from labkit.train.step import StepSettings, scaler_for, train_step

    ids = torch.as_tensor(token_ids).reshape(-1)
    if ids.numel() <= seq_len + 1:
        raise ValueError(f"token_ids: need more than seq_len + 1 = {seq_len + 1} tokens; got {ids.numel()}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    device = next(model.parameters()).device
    settings = StepSettings(scaler=scaler_for(device, enabled=False), max_grad_norm=None)
    model.train()
    losses: list[float] = []
    for _ in range(steps):
        starts = torch.randint(0, ids.numel() - seq_len - 1, (batch_size,), generator=generator)
        batch = torch.stack([ids[s : s + seq_len] for s in starts.tolist()]).to(device)
        # labels = inputs: the loss shifts them by one, so every position predicts the next token
        losses.append(train_step(model, [{"input_ids": batch, "labels": batch}], optimizer, settings).loss)
    model.eval()
    return losses
