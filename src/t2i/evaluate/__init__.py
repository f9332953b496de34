"""Metrics and benchmark glue: scoring generated images against what their prompts say."""
