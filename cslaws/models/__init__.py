"""Llama-style decoder family whose linear layers come from a format factory."""
