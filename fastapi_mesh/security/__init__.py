"""Security: the caller's identity and allow lists (``identity``), ``fastapi-mesh serve``'s mTLS server
(``server``), development certificates (``certs``) and the mTLS files both sides load and watch (``files``).
Outbound mTLS is the connection layer's (``fastapi_mesh.connection.tls``)."""
