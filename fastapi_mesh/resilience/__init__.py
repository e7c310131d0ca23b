"""Resilience state and rules: breakers, bulkheads, retry budgets and rules, backoff, outlier detection,
hedging latencies; route policies and fallbacks. The layers that apply them to calls are in ``layers``."""
