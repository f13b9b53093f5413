"""Quality canaries end to end: the issue's two example targets probe the simulator, every probe
stores every check's outcome, a worse answer opens a `quality` alert naming the failing checks,
and the right answer back resolves it (SQLite and PostgreSQL, real HTTP)."""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from monitor import config
from monitor.daemon import Daemon
from monitor.domain import AlertState
from monitor.sim import SimClient, Simulator
from monitor.store.models import AlertRow, CheckResultRow, ProbeRow, TargetRow
from monitor.store.records import Recorder
from monitor.store.spool import Spool

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ARITH = "What is 17*23? Reply with the number only."
JSON = 'Return {"answer": 4} as JSON, nothing else.'
WRONG = "Three hundred ninety-one"

# The examples as written, pointed at the simulator, with short baselines so that a
# test takes tens of probes.
CONFIG = """
[database]
url = "{database_url}"

[alerts]
group_wait = "0s"

[defaults]
base_url = "{sim_url}/v1"
interval = "1m"
detect = {{ quality_recent_probes = 10, quality_baseline_min_probes = 10 }}

[[targets]]
name = "gpt-4o-arith"
provider = "openai"
model = "gpt-4o"
messages = [{{ role = "user", content = "What is 17*23? Reply with the number only." }}]
checks = [
  {{ content_equals = "391" }},                 # after trimming whitespace
  {{ content_regex = "^[0-9]+$" }},
  {{ finish_reason = "stop" }},
  {{ max_total = "5s" }},
]

[[targets]]
name = "gpt-4o-json"
provider = "openai"
model = "gpt-4o"
messages = [{{ role = "user", content = "Return {{\\"answer\\": 4}} as JSON, nothing else." }}]
params = {{ response_format = {{ type = "json_object" }} }}
checks = [{{ json_schema = {{ type = "object", required = ["answer"], properties = {{ answer = {{ const = 4 }} }} }} }}]
"""


class Canaries:
    """Both targets probed once a minute of fake clock; HTTP and the database are real."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.minute = 0

    def now(self) -> datetime:
        return T0 + timedelta(minutes=self.minute)

    def probes(self, count: int) -> None:
        for _ in range(count):
            assert self.daemon.tick(self.now()) == 2
            self.minute += 1


@pytest.fixture
def canaries(tmp_path: Path, engine: Engine, database_url: str, sim: SimClient,
             sim_server: Simulator) -> Iterator[Canaries]:
    sim.update(latency={"base_ms": 5, "jitter_ms": 1},
               answers={ARITH: "391", JSON: '{"answer": 4}'})
    path = tmp_path / "monitor.toml"
    path.write_text(textwrap.dedent(CONFIG).format(database_url=database_url,
                                                   sim_url=sim_server.url))
    settings = config.load(str(path), environ={"OPENAI_API_KEY": "sk-test"})
    daemon = Daemon(settings, Recorder(engine), Spool(tmp_path / "spool.jsonl"),
                    clock=lambda: run.now())
    daemon.register()
    run = Canaries(daemon)
    yield run
    daemon.close()


def outcomes(engine: Engine) -> Counter[tuple[str, str, str]]:
    """(target, check, outcome) -> probes."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(TargetRow.name, CheckResultRow.check_name, CheckResultRow.outcome)
            .join(TargetRow, TargetRow.id == CheckResultRow.target_id)).all()
    return Counter((name, check, outcome) for name, check, outcome in rows)


def quality_alerts(engine: Engine) -> list[AlertRow]:
    with engine.connect() as connection:
        return list(connection.execute(
            select(AlertRow).where(AlertRow.kind == "quality").order_by(AlertRow.id)).all())


def test_every_probe_stores_every_checks_outcome(canaries: Canaries, engine: Engine) -> None:
    canaries.probes(5)
    assert outcomes(engine) == {
        ("gpt-4o-arith", "content_equals", "pass"): 5,
        ("gpt-4o-arith", "content_regex", "pass"): 5,
        ("gpt-4o-arith", "finish_reason", "pass"): 5,
        ("gpt-4o-arith", "max_total", "pass"): 5,
        ("gpt-4o-json", "json_schema", "pass"): 5,
    }
    with engine.connect() as connection:
        probes = connection.execute(select(ProbeRow.id)).scalars().all()
        judged = connection.execute(select(CheckResultRow.probe_id).distinct()).scalars().all()
    assert sorted(probes) == sorted(judged)


def test_a_worse_answer_opens_a_quality_alert_naming_the_checks_and_reverting_resolves_it(
    canaries: Canaries, engine: Engine, sim: SimClient
) -> None:
    canaries.probes(25)
    assert quality_alerts(engine) == []
    sim.update(answers={ARITH: WRONG}, fingerprints=[{"value": "fp_b"}])
    canaries.probes(10)
    (alert,) = quality_alerts(engine)
    target = select(TargetRow.name).where(TargetRow.id == alert.target_id)
    with engine.connect() as connection:
        assert connection.execute(target).scalar_one() == "gpt-4o-arith"
    assert (alert.key, alert.state) == ("pass_rate", AlertState.OPEN)
    assert set(alert.after["failing"]) == {"content_equals", "content_regex"}
    assert alert.after["example"]["content"] == WRONG
    assert alert.after["example"]["reasons"]["content_equals"] == (
        f'answered "{WRONG}", not "391"')
    assert (alert.before["system_fingerprint"], alert.after["system_fingerprint"]) == (
        "fp_6ec83003ad", "fp_b")
    assert f"fp_b (gpt-4o-2024-08-06) answered '{WRONG}'" in alert.explanation
    counts = outcomes(engine)
    assert counts[("gpt-4o-arith", "content_equals", "fail")] >= 8
    assert counts[("gpt-4o-arith", "finish_reason", "fail")] == 0
    assert counts[("gpt-4o-json", "json_schema", "fail")] == 0

    sim.update(answers={ARITH: "391"})
    canaries.probes(25)
    (alert,) = quality_alerts(engine)
    assert alert.state == AlertState.RESOLVED and alert.resolution


def test_a_spooled_result_keeps_its_check_outcomes_and_tool_calls() -> None:
    from monitor.domain import CheckOutcome, CheckResult, Choice, ProbeResult, ToolCall
    from monitor.store import spool

    result = ProbeResult(
        uid="u1", target_name="t", config_hash="h", started_at=T0, stream=False,
        request_url="http://x/v1/chat/completions", request_payload={"model": "m"}, ok=True,
        choices=(Choice(0, "tool_calls", None, tool_calls=(ToolCall("add", '{"a": 1}'),)),),
        checks=(CheckResult("tool_call", CheckOutcome.PASS),
                CheckResult("max_total", CheckOutcome.FAIL, "took 6000 ms, more than 5000 ms")))
    assert spool.decode(spool.encode(result)) == result


def test_reports_and_metrics_show_pass_rates_per_check_and_per_backend(
    canaries: Canaries, engine: Engine, sim: SimClient
) -> None:
    from monitor.health import build_report, metrics_snapshot
    from monitor.render.html import render_html
    from monitor.render.metrics import exposition_registry, render_metrics
    from monitor.render.table import render_table
    from monitor.store import rollups

    canaries.probes(6)
    sim.update(answers={ARITH: "<b>391</b>"}, fingerprints=[{"value": "fp_b"}])
    canaries.probes(2)
    report = build_report(engine, T0, canaries.now(), None, canaries.now())
    arith = next(t for t in report["targets"] if t["target"] == "gpt-4o-arith")
    equals = next(c for c in arith["checks"] if c["check"] == "content_equals")
    assert (equals["pass"], equals["fail"], equals["not_applicable"]) == (6, 2, 0)
    assert equals["pass_rate"] == 0.75
    assert [(b["fingerprint"], b["pass"], b["fail"], b["pass_rate"])
            for b in equals["by_backend"]] == [("fp_6ec83003ad", 6, 0, 1.0), ("fp_b", 0, 2, 0.0)]
    assert {c["check"] for c in arith["checks"]} == {
        "content_equals", "content_regex", "finish_reason", "max_total"}

    text = render_table(report)
    assert "content_equals 75.0% (6/8)" in text
    assert "content_equals from fp_b gpt-4o-2024-08-06: 0.0% (0/2)" in text
    html = render_html(report)
    assert "<h3>checks on the answers</h3>" in html and "<b>391</b>" not in html

    rollups.catch_up(engine)  # as a scrape does first (web/serving.py)
    body, _ = render_metrics(exposition_registry(lambda: metrics_snapshot(engine)), "")
    lines = body.decode().splitlines()
    assert ('monitor_check_results_total{check="content_equals",outcome="fail",'
            'target="gpt-4o-arith"} 2.0') in lines
    assert ('monitor_check_results_total{check="json_schema",outcome="pass",'
            'target="gpt-4o-json"} 8.0') in lines


def test_detect_backtests_stored_answers_with_the_checks_configured_now(
    canaries: Canaries, engine: Engine, sim: SimClient, tmp_path: Path
) -> None:
    import json

    from click.testing import CliRunner

    from monitor.cli import cli

    canaries.probes(25)
    sim.update(answers={ARITH: WRONG})
    canaries.probes(10)
    (alert,) = quality_alerts(engine)
    path = tmp_path / "monitor.toml"

    def detect() -> list[dict[str, object]]:
        result = CliRunner().invoke(cli, ["detect", "--json", "--config", str(path)],
                                    env={"OPENAI_API_KEY": "sk-test"})
        assert result.exit_code == 0, result.output
        return [e for e in json.loads(result.output) if e["kind"] == "quality"]

    (event,) = detect()
    assert (event["target"], event["opened"], event["after"]) == (
        "gpt-4o-arith", True, alert.after)
    # Only the regex now: the stored answers are judged again by it, not by what was stored.
    path.write_text(path.read_text().replace(
        '{ content_equals = "391" },', "").replace('{ finish_reason = "stop" },', ""))
    (event,) = detect()
    assert set(event["after"]["failing"]) == {"content_regex"}
    assert event["after"]["example"]["reasons"] == {
        "content_regex": f'answered "{WRONG}", not matching "^[0-9]+$"'}


def test_replay_shows_the_checks_on_the_replayed_answer_next_to_the_original(
    canaries: Canaries, engine: Engine, sim: SimClient, tmp_path: Path
) -> None:
    import json

    from click.testing import CliRunner

    from monitor.cli import cli

    canaries.probes(1)
    with engine.connect() as connection:
        original = connection.execute(
            select(ProbeRow.id).join(TargetRow, TargetRow.id == ProbeRow.target_id)
            .where(TargetRow.name == "gpt-4o-arith")).scalar_one()
    sim.update(answers={ARITH: WRONG})
    args = ["replay", str(original), "--config", str(tmp_path / "monitor.toml")]
    env = {"OPENAI_API_KEY": "sk-test"}
    result = CliRunner().invoke(cli, [*args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    outcomes_of = {side: {c["check"]: c["outcome"] for c in answer["checks"]}
                   for side, answer in (("original", document["original"]),
                                        ("replay", document["replays"][0]))}
    assert outcomes_of == {
        "original": {"content_equals": "pass", "content_regex": "pass", "finish_reason": "pass",
                     "max_total": "pass"},
        "replay": {"content_equals": "fail", "content_regex": "fail", "finish_reason": "pass",
                   "max_total": "pass"}}
    text = CliRunner().invoke(cli, args, env=env).output
    assert "* content_equals" in text and "  finish_reason" in text
    assert 'content_equals on replay #' in text and f'answered "{WRONG}", not "391"' in text


def test_a_batch_replay_counts_the_checks_passed_before_and_after(
    canaries: Canaries, sim: SimClient, tmp_path: Path
) -> None:
    import json

    from click.testing import CliRunner

    from monitor.cli import cli

    canaries.probes(4)
    sim.update(answers={ARITH: WRONG})
    result = CliRunner().invoke(cli, [
        "replay", "--target", "gpt-4o-arith", "--since", T0.isoformat(), "--json",
        "--config", str(tmp_path / "monitor.toml")], env={"OPENAI_API_KEY": "sk-test"})
    assert result.exit_code == 0, result.output
    # The JSON summary on stdout; progress ("run #1") goes to stderr.
    assert json.loads(result.stdout)["checks"] == {
        "content_equals": [4, 4, 0], "content_regex": [4, 4, 0], "finish_reason": [4, 4, 4],
        "max_total": [4, 4, 4]}


@pytest.mark.parametrize(("answers", "message"), [
    pytest.param({"x": 3}, "scenario: answers.x: expected a string, got 3", id="not-text"),
    pytest.param("nope", "scenario: answers: expected a table, got 'nope'", id="not-a-table"),
])
def test_the_simulators_answers_are_validated(answers: object, message: str) -> None:
    from monitor.errors import SimulatorError
    from monitor.sim import Scenario

    with pytest.raises(SimulatorError) as caught:
        Scenario.from_dict({"answers": answers})
    assert str(caught.value) == message


def test_the_simulator_answers_a_listed_prompt_and_an_override_still_wins(
    sim: SimClient, sim_server: Simulator
) -> None:
    import requests

    def ask(prompt: str) -> str:
        body = requests.post(f"{sim_server.url}/v1/chat/completions", timeout=10, json={
            "model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]}).json()
        return str(body["choices"][0]["message"]["content"])

    sim.update(answers={ARITH: "391"})
    assert ask(ARITH) == "391"
    assert ask("Reply with the single word: pong") == "pong"  # others as before
    sim.enqueue({"content": "override"})
    assert ask(ARITH) == "override"
