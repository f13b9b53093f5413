"""`monitor demo`: the whole pipeline on the embedded default, with no account and no key.

It starts the simulator on a free loopback port, writes a config for four simulated targets
(OpenAI plain and streaming, Azure, a local OpenAI-compatible server), probes them for a few
rounds while the simulator changes under them, and shows what the SQLite file now holds.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, Integer, cast, func, select

from monitor import config
from monitor.daemon import Prober
from monitor.render import text as report
from monitor.sim import SimClient, Simulator
from monitor.store import db
from monitor.store.models import ProbeRow, RequestPayloadRow, TargetRow
from monitor.store.records import Recorder

DEMO_KEY = "sim-demo-key"  # sent like a real key; the simulator needs none

_CONFIG = """\
[database]
url = "{database_url}"

[defaults]
interval = "1m"
timeout = "5s"

[[targets]]
name = "gpt-4o"
provider = "openai"
base_url = "{url}/v1"
api_key_env = "SIM_DEMO_KEY"
model = "gpt-4o"

[[targets]]
name = "gpt-4o-mini-stream"
provider = "openai"
base_url = "{url}/v1"
api_key_env = "SIM_DEMO_KEY"
model = "gpt-4o-mini"
stream = true

[[targets]]
name = "azure-gpt-4o"
provider = "azure"
base_url = "{url}"
api_key_env = "SIM_DEMO_KEY"
deployment = "gpt-4o-prod"
api_version = "2024-10-21"

[[targets]]
name = "local-llama"
provider = "openai-compatible"
base_url = "{url}/v1"
model = "llama-3.1-8b-instruct"
"""

# What the simulator does between rounds, so the stored history has something to show.
_TWISTS: dict[int, tuple[str, dict[str, object]]] = {
    2: ("gpt-4o's alias now points at a new snapshot with a new fingerprint",
        {"aliases": {"gpt-4o": "gpt-4o-2024-11-20"},
         "fingerprints": [{"value": "fp_b28b39ffa8", "weight": 1}]}),
}


def run(database_url: str, rounds: int, echo: Callable[[str], None]) -> None:
    with Simulator(seed=7) as sim, tempfile.TemporaryDirectory() as workdir:
        client = SimClient(sim.url)
        client.update(
            aliases={"gpt-4o-prod": "gpt-4o-2024-08-06"},  # the Azure deployment's snapshot
            latency={"base_ms": 120, "jitter_ms": 40},
            fingerprints=[{"value": "fp_6ec83003ad", "weight": 3},
                          {"value": "fp_50cad350e4", "weight": 1}],
        )
        echo(f"Simulator (OpenAI-compatible, built in) listening on {sim.url}")
        path = Path(workdir) / "monitor.toml"
        path.write_text(_CONFIG.format(url=sim.url, database_url=database_url))
        settings = config.load(str(path), environ={"SIM_DEMO_KEY": DEMO_KEY})
        echo(f"Storing probes in {db.display_url(settings.database_url)}")
        db.upgrade(settings.database_url)
        engine = db.open_store(settings.database_url)
        prober = Prober(Recorder(engine))
        try:
            prober.register(settings.targets)
            width = max(len(t.name) for t in settings.targets)
            for round_number in range(1, rounds + 1):
                if round_number in _TWISTS:
                    what, changes = _TWISTS[round_number]
                    echo(f"-- simulator: {what}")
                    client.update(**changes)
                if round_number == rounds and rounds > 1:
                    echo("-- simulator: the next gpt-4o call will get a 503")
                    client.enqueue({"fault": "http_503", "model": "gpt-4o"})
                echo(f"round {round_number}/{rounds}")
                for result, _ in prober.probe_all(settings.targets):
                    echo("  " + report.probe_line(result, width))
                if round_number < rounds:
                    time.sleep(0.3)
            _summarize(engine, echo)
        finally:
            prober.close()
            engine.dispose()
        echo("")
        echo("Next: write a monitor.toml for your own models (see README.md), then")
        echo("  monitor config check && monitor db upgrade && monitor probe")


def _summarize(engine: Engine, echo: Callable[[str], None]) -> None:
    with engine.connect() as connection:
        total = connection.execute(select(func.count(ProbeRow.id))).scalar_one()
        payloads = connection.execute(select(func.count(RequestPayloadRow.id))).scalar_one()
        rows = connection.execute(
            select(
                TargetRow.name,
                func.count(ProbeRow.id),
                func.sum(cast(ProbeRow.ok, Integer)),
            )
            .join(ProbeRow, ProbeRow.target_id == TargetRow.id)
            .group_by(TargetRow.name)
            .order_by(TargetRow.name)
        ).all()
        seen = connection.execute(
            select(TargetRow.name, ProbeRow.model, ProbeRow.system_fingerprint)
            .join(ProbeRow, ProbeRow.target_id == TargetRow.id)
            .where(ProbeRow.ok)
            .distinct()
            .order_by(TargetRow.name)
        ).all()
    echo("")
    echo(f"Stored: {total} probes ({payloads} distinct request payloads, stored once each), "
         "each with its headers, raw body, usage and timings.")
    for name, count, ok in rows:
        models = sorted({report.safe_text(m or "-") for n, m, _ in seen if n == name})
        fingerprints = sorted({report.safe_text(f or "-") for n, _, f in seen if n == name})
        echo(f"  {name}: {ok}/{count} ok; models {', '.join(models) or '-'}; "
             f"fingerprints {', '.join(fingerprints) or '-'}")
