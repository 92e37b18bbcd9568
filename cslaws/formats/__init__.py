"""Compressed number formats. Every module in this package registers its formats on import.

Adding a format is one new file here with one `@register_format` class: this package imports every
module beside it, so nothing else needs editing.
"""

import importlib
import pkgutil

from cslaws.formats.base import FORMATS, Format, get_format, make_format, register_format
from cslaws.formats.linear import CompressedLinear, LinearFactory

_NOT_FORMATS = {"base", "linear", "kernels"}

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in _NOT_FORMATS and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["FORMATS", "CompressedLinear", "Format", "LinearFactory", "get_format", "make_format", "register_format"]
