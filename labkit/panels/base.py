"""What every panel shares: a message area for bad input, display, and static figures for reports."""

from __future__ import annotations

import html
import os

import ipywidgets as widgets
import plotly.graph_objects as go


def report_mode() -> bool:
    """True when a lab runs as a report (``labkit report`` sets ``LABKIT_REPORT=1``).

    Exported widgets are dead HTML, so in report mode panels display static plotly figures.
    """
    return os.environ.get("LABKIT_REPORT", "") not in ("", "0")


class Panel:
    """Base class: subclasses build ``self.widget`` and implement :meth:`figures`."""

    widget: widgets.Widget

    def __init__(self) -> None:
        self.message = widgets.HTML(value="")

    def show_error(self, error: Exception | str) -> None:
        """Show bad input inside the panel (never a traceback)."""
        self.message.value = (
            f'<div style="color:#b00020;font-weight:600">{html.escape(str(error))}</div>'
        )

    def clear_error(self) -> None:
        self.message.value = ""

    @property
    def error(self) -> str:
        """The message currently shown ('' when the input is fine)."""
        return self.message.value

    def figures(self) -> list[go.Figure]:
        """The panel's current state as plain figures (what a report shows)."""
        raise NotImplementedError

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if report_mode():
            for fig in self.figures():
                fig.show()
        else:
            display(self.widget)
