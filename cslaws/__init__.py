"""cslaws: scaling laws of language models trained over compressed number formats."""

__version__ = "0.1.0"
