"""Cloud identity: agent-side fetch and server-side verification per cloud, each beside a
bare HTTP GET to the same loopback fake measured in the same run.

    .venv/bin/python bench/identity_exchange.py [--rounds 50]

* fetch: the agent's fetcher (AWS: two GETs with a reused IMDSv2 token; Google: one GET;
  Azure: one GET) against ``tests.fakes.metadata`` on 127.0.0.1 (the fake signs every
  answer with test keys, like the clouds). Baseline: a bare GET of ``/`` on the same fake
  with a new metadata client, the least any fetch can cost; and the same GET with httpx's
  default client, which reloads the CA bundle each time (what fetches cost before the
  agent shared one TLS context).
* verify: the control plane's verifier on the fetched proof (AWS: RSA-SHA256 against the
  configured key; Google: RS256 + claims, keys cached; Azure: PKCS#7 parse, content
  signature, 3-certificate chain, claims).
* probe: ``auto`` detection against a silent metadata address (the worst case at start).
Median of ``--rounds``; rounds interleave the clouds so a busy machine hurts them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from agent.identity.aws import AwsIdentityFetcher
from agent.identity.azure import AzureIdentityFetcher
from agent.identity.detect import ProbeTargets, probe
from agent.identity.gcp import GoogleIdentityFetcher
from agent.identity.transport import metadata_client
from controlplane.identity.service import IdentityService
from tests.e2e.identity.conftest import identity_config
from tests.fakes.metadata import running_fake


async def timed(call: Callable[[], Awaitable[object]]) -> tuple[float, object]:
    start = time.perf_counter()
    result = await call()
    return (time.perf_counter() - start) * 1e3, result


async def main(rounds: int) -> None:
    with running_fake() as fake:
        service = IdentityService(identity_config(fake))
        aws = AwsIdentityFetcher(fake.url)
        google = GoogleIdentityFetcher(fake.host)
        azure = AzureIdentityFetcher(fake.url)

        async def bare() -> object:
            async with metadata_client(2.0) as http:
                return await http.get(fake.url + "/", headers={"Metadata-Flavor": "Google"})

        async def bare_default_client() -> object:
            # What every fetch cost before the TLS context was shared: httpx's default
            # client re-reads the CA bundle on creation.
            async with httpx.AsyncClient(trust_env=False) as http:
                return await http.get(fake.url + "/", headers={"Metadata-Flavor": "Google"})

        samples: dict[str, list[float]] = {}
        for _ in range(rounds):
            for name, call in (
                ("baseline bare GET", bare),
                ("bare GET, new CA load", bare_default_client),
                ("fetch aws", aws.fetch),
                ("fetch google", google.fetch),
                ("fetch azure", azure.fetch),
            ):
                ms, result = await timed(call)
                samples.setdefault(name, []).append(ms)
                if name == "fetch aws":
                    start = time.perf_counter()
                    service.aws(result.document, result.signature)  # type: ignore[attr-defined]
                    samples.setdefault("verify aws", []).append((time.perf_counter() - start) * 1e3)
                elif name == "fetch google":
                    ms, _ = await timed(lambda r=result: service.google(r.json_web_token))  # type: ignore[attr-defined]
                    samples.setdefault("verify google", []).append(ms)
                elif name == "fetch azure":
                    ms, _ = await timed(lambda r=result: service.azure(r.signature))  # type: ignore[attr-defined]
                    samples.setdefault("verify azure", []).append(ms)
        for name, values in samples.items():
            print(f"{name:20s} median {statistics.median(values):7.2f} ms  (n={len(values)})")
        fake.silent = True
        targets = ProbeTargets(fake.url, fake.host, fake.url, timeout=2.0)
        ms, found = await timed(lambda: probe(targets))
        print(f"{'probe, silent':20s} {ms:7.0f} ms -> {found}  (bound: the 2 s metadata timeout)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    asyncio.run(main(parser.parse_args().rounds))
