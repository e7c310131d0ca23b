"""``python -m bench``: run every benchmark and rewrite docs/benchmarks.md with the results."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
from datetime import date
from pathlib import Path

import httpx

from bench import (
    balancer,
    discovery,
    e2e,
    failover,
    instructions,
    mtls,
    observability,
    overhead,
    plots,
    probes,
    scale,
    soak,
)
from fastapi_mesh.settings import DEFAULT_CONNECTION_BACKEND

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def main() -> None:
    quick = "--quick" in sys.argv
    calls, rounds = (1_000, 3) if quick else (overhead.CALLS_PER_ROUND, overhead.ROUNDS)
    results = asyncio.run(overhead.run(calls, rounds))
    table = overhead.report(results)
    print(table)
    observed = asyncio.run(observability.run(calls, rounds))
    observability_table = observability.report(observed)
    print(observability_table)
    counted = None if quick else instructions.run()
    instruction_table = instructions.report(counted)
    observed_counts = None if quick else instructions.run(observability.INSTRUCTION_VARIANTS)
    observability_counts = observability.instruction_report(observed_counts)
    print(observability_counts)
    print(instruction_table)
    picks = balancer.run(sizes=(10, 1_000), rounds=3) if quick else balancer.run()
    pick_table = balancer.report(picks)
    print(pick_table)
    updates = discovery.run(quick=quick)
    updates_table = discovery.report(updates)
    print(updates_table)
    probed = asyncio.run(probes.run(rounds=3, probes=100) if quick else probes.run())
    probe_table = probes.report(probed)
    print(probe_table)
    e2e_results = e2e.run(
        rounds=e2e.QUICK_ROUNDS if quick else e2e.ROUNDS,
        seconds=e2e.QUICK_SECONDS if quick else e2e.SECONDS,
        leak_calls=e2e.QUICK_LEAK_CALLS if quick else e2e.LEAK_CALLS,
        leak_restarts=e2e.QUICK_LEAK_RESTARTS if quick else e2e.LEAK_RESTARTS,
    )
    e2e_table = e2e.report(e2e_results)
    e2e_targets = e2e.targets(e2e_results, DEFAULT_CONNECTION_BACKEND)
    print(e2e_table)
    print(e2e_targets)
    mtls_results = mtls.run(
        rounds=mtls.QUICK_ROUNDS if quick else mtls.ROUNDS, seconds=mtls.QUICK_SECONDS if quick else mtls.SECONDS
    )
    mtls_table = mtls.report(mtls_results)
    mtls_targets = mtls.targets(mtls_results)
    print(mtls_table)
    print(mtls_targets)
    failed_over = failover.run(quick=quick, progress=lambda line: print(line, file=sys.stderr))
    failover_table = failover.report(failed_over)
    failover_targets = failover.targets(failed_over)
    print(failover_table)
    print(failover_targets)
    scaled = scale.run(quick=quick)
    scale_table = scale.report(scaled)
    scale_targets = scale.targets(scaled)
    print(scale_table)
    print(scale_targets)
    if quick:
        return
    plots.plot_all(
        overhead=results,
        observability=observed,
        balancer=picks,
        discovery=updates,
        probes=probed,
        e2e=e2e_results,
        mtls=mtls_results,
        failover=failed_over,
        scale=scaled,
    )
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"httpx {httpx.__version__}"
    )
    # The soak is not part of this run (`make soak ARGS=--publish` writes its section): keep the one published.
    soak_section = soak.published(OUTPUT) or f"{soak.HEADING}\n\nNot published yet: `make soak ARGS=--publish`.\n"
    OUTPUT.write_text(
        f"""# Benchmarks

Produced by `make bench` (`python -m bench`) on {date.today().isoformat()}; {machine}. Speed goals are
checked here, never by timed assertions in tests: the machines are shared and noisy, so each figure is the
median of {rounds} interleaved rounds of {calls:,} sequential calls, measured as the process's CPU time, and
only ratios measured in the same run are compared. The variants take turns: their order moves on by one place
each round (``bench/rounds.py``), as measured in a fixed order the variant measured first came out 2-5%
slower than the same code measured second.

## Per-call overhead of the full stack

Every variant sends the same GET to the same `httpx.MockTransport` (a handler answering 200 with a small
JSON body), so what differs is only the client-side machinery:

- **raw httpx**: `httpx.AsyncClient(transport=mock).get(url)`.
- **httpx floor**: what `MeshClient` itself sends through, without any of its layers: `build_request` with
  an already parsed URL, handed straight to the transport, body read. `MeshClient` does exactly this
  under its layers (it parses a path's URL once and keeps it, and does not go through
  `httpx.AsyncClient.send`, whose auth flow, redirect loop and cookie jar it does not use; see
  [architecture](architecture.md#how-a-call-flows)). The last column, a row's cost above this floor, is
  what the mesh's layers cost.
- **mesh, no deadline**: `MeshClient(settings, transport=mock).get("user-service", "/api/users")` through
  the whole stack — bulkhead, circuit breaker, retry with its budget, balancer with outlier detection,
  attempt layer (body read inside the stack), request counters behind `/metrics`; tracing off — with
  `retry.max_elapsed: null`, so the call has no deadline.
- **mesh (preset)**: the same with the development preset as it is: its `retry.max_elapsed` (15 s) gives
  every call a deadline that caps the attempt timeouts and goes downstream as `x-mesh-timeout-ms` (no
  timer is armed for it).
- **mesh + deadline**: the same with `deadline=5`: one `asyncio.timeout_at` per call, per-attempt timeouts
  capped by the remaining budget, `x-mesh-timeout-ms` sent downstream.
- **tenacity + purgatory + asyncio.timeout**: the hand-composed equivalent around raw httpx (3 attempts
  with exponential jitter, a purgatory circuit breaker, an overall timeout).

{table}

![Per-call CPU of each variant](img/bench-overhead.png)

The same variants counted in machine instructions under valgrind's callgrind, which the machine's other
load does not disturb ({instructions.LOW:,} and {instructions.HIGH:,} calls in fresh interpreters, the
difference divided by the calls between):

{instruction_table}

Reading the two tables: instruction counts are repeatable to a fraction of a percent; CPU time on these
shared virtual machines moves by 10-30% between runs and weighs memory traffic that instruction counts do
not see. A ratio is compared only with ratios of the same run.

Target: mesh <= 1.10x raw httpx per call, and cheaper than the hand-composed stack. Every mesh row is
cheaper than raw httpx: what `httpx.AsyncClient.send` and parsing the URL string cost on each call is more
than what the mesh's layers add. The layers' own cost is the last column: bulkhead, breaker, retry with
its budget, balancer and attempt layers, the counters, and for the deadline rows the remaining budget sent
downstream and, with `deadline=`, the `asyncio.timeout_at` timer.

## Observability: metrics and tracing per call

{observability.__doc__.split("Targets:")[0].strip()}

{observability_table}

![Per-call CPU with metrics and tracing on and off](img/bench-observability.png)

The same variants, and the OpenTelemetry calls alone, counted in machine instructions under valgrind's
callgrind as in the overhead section ({instructions.LOW:,} and {instructions.HIGH:,} calls in fresh
interpreters, the difference divided by the calls between; the batch exporter's thread counted too).
Instruction counts do not move with the machine's other load, and do not weigh a cold cache either, so
"the mesh's own part" (what a tracing row adds beyond its OpenTelemetry calls alone) is the mesh's code:

{observability_counts}

Targets: metrics add <= 5% per call; tracing on but unsampled <= 5%; recording <= 25%. The base is a call
on a mock transport, tens of µs: the smallest there is; against a call on a real socket (see
[end to end](#end-to-end-on-real-sockets)) the same µs are a far smaller share. The "OpenTelemetry calls
alone" columns are what the SDK's own calls for one request cost, in a loop of their own: for a sampled-out
request the sampler, the ids and the non-recording span, and the global propagator writing `traceparent`;
for a recorded one also the span's attribute store, its end and the batch processor's queue. Where that
column alone is past the target, no change to the mesh can meet it; what a row adds beyond it is the
mesh's own few steps (the span's start attributes are kept per URL, the header is appended in place) and,
in CPU time, the SDK's code running colder inside a whole call than in its own loop. See
[tracing](tracing.md#what-it-costs).

## Load balancer: pick cost and memory

{balancer.__doc__.split("Targets:")[0].strip()}

{pick_table}

![Pick cost by strategy and number of endpoints](img/bench-balancer.png)

Targets: <= 5 µs per pick, <= 2x growth from 10 to 10,000 endpoints, <= 2 KiB of balancer state per
endpoint.

## Discovery updates

{discovery.__doc__.split("Targets:")[0].strip()}

{updates_table}

![Time to apply an update of 1,000 endpoints](img/bench-discovery.png)

Targets: an update of 1,000 endpoints applied in < 5 ms, touching only what changed; a call right after an
update costs no more than a call to a stable service. The Python-calls column is the machine-independent
part of that: a call after an update runs exactly the code a call to a stable set runs (no rebuild is left
for the call to do; pools, rotations and rings are rebuilt inside the update). What remains in the time
column for a changed set is the memory the update has just written (new endpoint states and pools) being
read for the first time by the call.

## Probes

{probes.__doc__.split("Target:")[0].strip()}

{probe_table}

![Probe cost with and without checks](img/bench-probes.png)

Target: a probe with a 1 s check registered answers as fast as one without. A probe only reads the checks'
last results, whatever they cost; with a sync check, its worker thread (sleeping, here) can take a share of
the interpreter now and then, a few percent at most in these runs.

## End to end on real sockets

{e2e.__doc__.split("Targets:")[0].strip()}

Client side: {e2e.machine()}. {e2e_results.rounds} interleaved rounds of {e2e_results.seconds:g} s per
variant and concurrency; the leak check makes {e2e.LEAK_CALLS:,} calls per backend with {e2e.LEAK_RESTARTS}
replica restarts. `python -m bench.e2e` runs this part alone (`--quick`: one short round).

{e2e_table}

![Throughput, p99 and client CPU per call end to end](img/bench-e2e.png)

Targets for the default backend (`connection.backend: {DEFAULT_CONNECTION_BACKEND}`), read from the
tables above:

{e2e_targets}

What the rows show: the mesh's own layers cost a few tens of µs per call (the mock-transport tables above);
on real sockets most of the rest is the connection layer. httpcore's pool, for every request it assigns and
every response it finishes, walks its connections, checks each idle one against all the others and polls
its socket, so its cost grows faster than the connections it holds: one pool for the whole fleet holds the
fleet's connections, one pool per endpoint only that endpoint's. aiohttp's connector takes an idle
connection of the origin in constant time and parses responses in C. See the architecture's
[connection layer](architecture.md#connection-layer) for how to choose.

## mTLS against plain HTTP

{mtls.__doc__.split("Targets:")[0].strip()}

{mtls_results.rounds} interleaved rounds of {mtls_results.seconds:g} s per variant and concurrency;
`python -m bench.mtls` runs this part alone (`--quick`: one short round).

{mtls_table}

![Client CPU per call over mTLS and plain HTTP](img/bench-mtls.png)

Target: client CPU per call over mTLS within {mtls.TARGET:.2f}x of plain HTTP once connections are warm, for
the default backend (`connection.backend: {DEFAULT_CONNECTION_BACKEND}`):

{mtls_targets}

What the difference is made of: the mesh's own part of an mTLS call (the shared context, the identity
check's bookkeeping, the look at the certificate files every `mtls.reload_interval`) is under a µs;
the identity check itself runs once per connection, in the handshake, not per call. The rest is the TLS
record layer: encrypting the request and decrypting the response is a few µs, and carrying every read and
write through the event loop's TLS transport (asyncio's is Python, uvloop's Cython) is most of what
remains, as it is for a plain aiohttp or httpx client over TLS.

## Failover

{failover.__doc__.split("Targets:")[0].strip()}

{failed_over.rounds} interleaved rounds of {failed_over.seconds:g} s per scenario and client at
{failed_over.rate:g} calls a second; `python -m bench.failover` runs this part alone (`--quick`: shorter).

{failover_table}

![Success rate, p99 and upstream requests per call in each scenario](img/bench-failover.png)

Targets: >= 99.9 % success through the kill with p99 <= 2x steady state; upstream requests <= 1.2x the calls
offered under a total outage:

{failover_targets}

## Scale: services and paths

{scale.__doc__.split("Targets:")[0].strip()}

`python -m bench.scale` runs this part alone (`--quick`: fewer, shorter rounds; `--plot`: redraws its plot too).

{scale_table}

![Per-call cost and memory as services and paths grow](img/bench-scale.png)

Targets: per call and per gateway request <= 1.2x the cost at 1 service and 1 path, up to 200 services and
1,000 paths; memory for distinct paths bounded; inbound series independent of the paths:

{scale_targets}

{soak_section}"""
    )
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
