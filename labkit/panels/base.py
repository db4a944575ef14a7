"""What every panel shares: a message area for bad input, display, and static figures for reports.

Every panel is a thin view over a plain-Python model (``panel.model``, a ``traitlets.HasTraits``
next to the view): the model holds the state and computes the figure data; the view links its
controls to the model's traits and draws. Text boxes are parsed once, at the widget boundary
(:meth:`Panel.bind_text`): a bad entry leaves the model unchanged and keeps a message naming the
field until the text is fixed.
"""

from __future__ import annotations

import html
import os
from typing import Any, Callable

import ipywidgets as widgets
import plotly.graph_objects as go
import traitlets

from labkit.errors import LabkitError


def report_mode() -> bool:
    """True when a lab runs as a report (``labkit report`` sets ``LABKIT_REPORT=1``).

    Exported widgets are dead HTML, so in report mode panels display static plotly figures.
    """
    return os.environ.get("LABKIT_REPORT", "") not in ("", "0")


class PanelError(LabkitError):
    """Bad input a panel itself detects (a text box that does not parse, nothing ticked)."""


def link(widget: widgets.Widget, model: traitlets.HasTraits, name: str) -> None:
    """Keep ``widget.value`` and ``model.<name>`` equal (the model's value wins at start, within the widget's bounds).

    Unlike ``traitlets.link`` this survives a model that coerces what it is given (nf4 forces
    bits to 4; a slider clamps): each side always copies the other's *current* value.
    """
    def to_model(_change: Any) -> None:
        setattr(model, name, widget.value)
        if widget.value != getattr(model, name):
            widget.value = getattr(model, name)

    def to_widget(_change: Any) -> None:
        value = getattr(model, name)
        if widget.value != value:
            widget.value = value

    to_widget(None)
    if widget.value != getattr(model, name):  # the widget clamped it (a slider's bounds): the model follows
        setattr(model, name, widget.value)
    widget.observe(to_model, names="value")
    model.observe(to_widget, names=name)


class Panel:
    """Base class: subclasses build ``self.model`` and ``self.widget`` and implement :meth:`figures`."""

    widget: widgets.Widget
    model: traitlets.HasTraits

    def __init__(self) -> None:
        self.message = widgets.HTML(value="")
        self._input_errors: dict[str, str] = {}
        self._model_error = ""

    # -- messages ------------------------------------------------------------------------------
    def show_error(self, error: Exception | str) -> None:
        """Show bad input inside the panel (never a traceback); pending text-box errors come first."""
        self._model_error = str(error)
        self._render()

    def clear_error(self) -> None:
        """Clear the model's error; text boxes that still hold bad text keep theirs."""
        self._model_error = ""
        self._render()

    def _active_input_errors(self) -> list[str]:
        """The text-box errors that apply to the current state (subclasses may leave some out)."""
        return list(self._input_errors.values())

    def _render(self) -> None:
        messages = self._active_input_errors() + ([self._model_error] if self._model_error else [])
        self.message.value = "".join(
            f'<div style="color:#b00020;font-weight:600">{html.escape(m)}</div>' for m in messages)

    @property
    def error(self) -> str:
        """The message currently shown ('' when the input is fine)."""
        return self.message.value

    @property
    def errors(self) -> list[str]:
        """The messages shown, as plain text: text-box errors first, then the model's."""
        return self._active_input_errors() + ([self._model_error] if self._model_error else [])

    @property
    def input_errors(self) -> dict[str, str]:
        """Text boxes whose text did not parse: field → message (the model kept its last value)."""
        return dict(self._input_errors)

    def bind_text(self, widget: widgets.Text, field: str, parse: Callable[[str], Any],
                  apply: Callable[[Any], None]) -> None:
        """Parse ``widget``'s text once, at the boundary: ``apply(parse(text))``, or keep a message.

        ``parse`` raises ``ValueError`` with a message naming ``field``; the model is only ever
        given parsed values.
        """
        def on_text(change: dict[str, Any]) -> None:
            try:
                value = parse(str(change["new"]))
            except ValueError as error:
                self._input_errors[field] = str(error)
                self._render()
                return
            had_error = self._input_errors.pop(field, None) is not None
            apply(value)
            if had_error:
                self._render()

        widget.observe(on_text, names="value")

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
