"""Shipped configs, addressed by their path under configs/ (for example formats/int4.yaml)."""
