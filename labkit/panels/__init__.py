"""Widget panels: thin ipywidgets + plotly views over labkit's plain-Python models."""
