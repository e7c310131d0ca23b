"""A runnable fastapi-mesh demo: an ``api-gateway`` in front of replicated demo upstream services.

``python -m example_app`` starts three ``user-service`` replicas and two ``order-service`` replicas on
loopback, then serves the gateway, which reaches them through the mesh (static discovery, load balancing,
retries, route policies, probes and metrics). ``python -m example_app --help`` lists the options.
"""
