"""Security: TLS and mTLS contexts for outbound calls (see ``fastapi_mesh.stack.build_ssl_context``)."""
