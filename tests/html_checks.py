"""Checks on exported HTML shared by the report and lab tests (not a test module)."""

from __future__ import annotations

import re

_SCRIPT_SRC = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']([^\"']+)", re.I)
_LINK_HREF = re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"']([^\"']+)", re.I)


def script_srcs(page: str) -> list[str]:
    """The ``src`` of every ``<script>`` tag."""
    return _SCRIPT_SRC.findall(page)


def remote_resources(page: str) -> list[str]:
    """Scripts and stylesheets the page would fetch from the network when opened."""
    return [url for url in script_srcs(page) + _LINK_HREF.findall(page) if url.startswith(("http:", "https:", "//"))]
