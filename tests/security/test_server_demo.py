"""``make demo ARGS=--mtls``: the demo with every hop over mTLS, run as a user runs it (``python -m example_app``)."""

from __future__ import annotations

import os
import re
import selectors
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.security.serve_support import ROOT

pytestmark = pytest.mark.integration

START_TIMEOUT = 30.0


def test_the_mtls_demo_serves_through_the_gateway_and_its_replicas_accept_only_the_gateway() -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESH_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "example_app", "--mtls", "--port", "0", "--log-level", "warning"],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    banner = ""
    try:
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_TIMEOUT
        while "Press Ctrl-C to stop." not in banner:
            assert process.poll() is None, banner
            assert time.monotonic() < deadline, banner
            if selector.select(timeout=0.2):
                banner += os.read(process.stdout.fileno(), 65536).decode()
        certs = Path(re.search(r"development certificates in (\S+)", banner).group(1))  # type: ignore[union-attr]
        gateway = re.search(r"api-gateway on (https://\S+),", banner).group(1)  # type: ignore[union-attr]
        plain = re.search(r"probes and /metrics on (http://\S+) ", banner).group(1)  # type: ignore[union-attr]
        replica = re.search(r"user-service-1\s+(https://\S+)", banner).group(1)  # type: ignore[union-attr]
        client = certs / "demo-client"
        verify = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        verify.load_cert_chain(client / "tls.crt", client / "tls.key")
        with httpx.Client(verify=verify, trust_env=False, timeout=10.0) as http:
            users = http.get(gateway + "/api/users")
            direct = http.get(replica + "/api/users")
        with httpx.Client(trust_env=False, timeout=5.0) as probes:
            ready = probes.get(plain + "/health/ready").status_code
        anonymous = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        with httpx.Client(verify=anonymous, trust_env=False, timeout=5.0) as http, pytest.raises(httpx.TransportError):
            http.get(gateway + "/api/users")
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
    assert users.status_code == 200 and users.json()["replica"].startswith("user-service-")  # gateway -> replica
    assert direct.status_code == 403  # the replica accepts only the gateway's identity
    assert ready == 200
    assert not certs.exists()  # the demo's certificates go with it
