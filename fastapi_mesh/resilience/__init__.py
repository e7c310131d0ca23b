"""Resilience layers: deadline, retry, attempt; route policies and fallbacks."""
