"""Prompt templates (``*.jinja``) for backends that take one prompt string instead of messages."""
