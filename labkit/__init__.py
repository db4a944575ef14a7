"""labkit: an interactive lab for learning how LLMs are fine-tuned."""

import logging as _logging

from labkit.i18n import get_language, set_language

__version__ = "0.1.0"
__all__ = ["__version__", "get_language", "set_language"]


class _QuietOptionalKernel(_logging.Filter):
    """Drop bitsandbytes' CPU warning about the optional ``kernels`` package.

    labkit leaves ``kernels`` uninstalled on purpose: with it installed, importing bitsandbytes
    tries to download a kernel from the Hugging Face hub, which fails on an offline workshop network.
    """

    def filter(self, record: _logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_QuietOptionalKernel())
