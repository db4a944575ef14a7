"""The β panel: how β turns the same log-ratios into implicit-reward margins and a DPO loss.

A plain model (pure functions, no widgets needed): given each held-out pair's log-ratios
Δ_w = log π(y_w) − log π_ref(y_w) and Δ_l, the margin is β·(Δ_w − Δ_l) and the loss is
−log σ(margin). Which answer wins does not depend on β; how hard the loss still pushes does —
a small β leaves the loss near log 2 for every pair (keep pushing, drift far from the
reference), a large β saturates it (stop early, stay close).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from labkit.prefs.dpo import check_beta

BETAS = (0.01, 0.03, 0.1, 0.3, 1.0)


def beta_view(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float) -> dict[str, Any]:
    """Margins, losses and their summary at one β (the panel's state)."""
    check_beta(beta)
    margins = beta * (chosen_logratios - rejected_logratios)
    losses = -F.logsigmoid(margins)
    return {"beta": beta, "margins": margins.tolist(), "mean_margin": float(margins.mean()),
            "reward_accuracy": float((margins > 0).float().mean()), "mean_loss": float(losses.mean()),
            "saturated": float((losses < 0.1).float().mean())}


def beta_table(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor,
               betas: Sequence[float] = BETAS) -> list[dict[str, float]]:
    """One row per β: mean margin, reward accuracy, mean loss, share of saturated pairs (loss < 0.1)."""
    rows = []
    for b in betas:
        view = beta_view(chosen_logratios, rejected_logratios, b)
        rows.append({k: v for k, v in view.items() if k != "margins"})
    return rows


def beta_figure(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor,
                betas: Sequence[float] = BETAS) -> Any:
    """A histogram of margins with a β slider (plotly's own slider: it works in an offline report)."""
    import plotly.graph_objects as go

    views = [beta_view(chosen_logratios, rejected_logratios, b) for b in betas]
    span = max(1e-6, max(abs(m) for v in views for m in v["margins"]))
    fig = go.Figure([go.Histogram(x=views[0]["margins"], nbinsx=30, name="β·(Δ chosen − Δ rejected)")])
    fig.frames = [go.Frame(data=[go.Histogram(x=v["margins"], nbinsx=30)], name=f"{v['beta']:g}",
                           layout={"title": _title(v)}) for v in views]
    fig.update_layout(
        title=_title(views[0]), xaxis_title="implicit-reward margin (chosen − rejected)", yaxis_title="pairs",
        xaxis_range=[-span, span], height=380, margin={"t": 60},
        sliders=[{"currentvalue": {"prefix": "β = "}, "steps": [
            {"label": f"{v['beta']:g}", "method": "animate",
             "args": [[f"{v['beta']:g}"], {"mode": "immediate", "frame": {"duration": 0, "redraw": True}}]}
            for v in views]}])
    return fig


def _title(view: dict[str, Any]) -> str:
    return (f"β = {view['beta']:g}: mean loss {view['mean_loss']:.3f} (log 2 = {math.log(2):.3f}), "
            f"saturated {view['saturated']:.0%}, chosen wins {view['reward_accuracy']:.0%}")
