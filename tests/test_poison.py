"""One odd answer must not stop storage (issue 11): upstream values are stored without length or
width limits, a record the database refuses for good is quarantined while every other result is
stored, and a spool that cannot be written keeps results in memory instead of losing them."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, delete, select

from monitor.cli import cli
from monitor.daemon import Daemon
from monitor.domain import Choice, ProbeResult, Usage
from monitor.sim import SimClient, Simulator
from monitor.store import db
from monitor.store import spool as spool_module
from monitor.store.failures import Failure, classify
from monitor.store.models import PROBE_FIELDS, PROBES_WITH_ANSWERS, ProbeRow, TargetRow
from monitor.store.probe_reads import probe_records
from monitor.store.records import Recorder
from monitor.store.spool import Spool, decode, encode
from tests.conftest import MakeSettings, empty_postgres, write_config
from tests.test_store import result

LONG = "x" * 300


class Lines(logging.Handler):
    """What the daemon and the spool log, whatever an earlier test did to propagation."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


@pytest.fixture
def logged() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("monitor")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def poison(**changes: Any) -> ProbeResult:
    """A result no database takes: `ok` is NOT NULL (an IntegrityError on both)."""
    return result(ok=None, **changes)


def naive(**changes: Any) -> ProbeResult:
    """A result refused before it reaches the database: UtcDateTime rejects naive times."""
    return result(started_at=datetime(2026, 11, 26, 1, 2, 3), **changes)


@pytest.mark.parametrize(
    ("changes", "column", "stored"),
    [
        pytest.param({"model": LONG}, "model", LONG, id="model-300"),
        pytest.param({"system_fingerprint": "fp_" + LONG}, "system_fingerprint", "fp_" + LONG,
                     id="fingerprint-300"),
        pytest.param({"choices": (Choice(index=0, finish_reason="s" * 41, content="hi"),)},
                     "finish_reason", "s" * 41, id="finish-reason-41"),
        pytest.param({"service_tier": "t" * 41}, "service_tier", "t" * 41, id="service-tier-41"),
        pytest.param({"openai_version": "2" * 41}, "openai_version", "2" * 41, id="version-41"),
        pytest.param({"x_request_id": "r" * 201}, "x_request_id", "r" * 201, id="request-id-201"),
        pytest.param({"response_id": "c" * 201}, "response_id", "c" * 201, id="response-id-201"),
        pytest.param({"usage": Usage(prompt_tokens=2**40, total_tokens=2**40 + 1)},
                     "prompt_tokens", 2**40, id="prompt-tokens-2^40"),
        pytest.param({"stream_chunks": 2**33}, "stream_chunks", 2**33, id="stream-chunks-2^33"),
        pytest.param({"model": "gpt\x00-4o"}, "model", "gpt\ufffd-4o", id="nul-in-model"),
        pytest.param({"error_detail": "bad\x00body"}, "error_detail", "bad\ufffdbody",
                     id="nul-in-error-detail"),
        pytest.param({"model": "gpt-\ud800"}, "model", "gpt-\ufffd", id="lone-surrogate"),
        pytest.param({"usage": Usage(prompt_tokens=2**70)}, "prompt_tokens", None,
                     id="beyond-64-bits"),
        pytest.param({"response_created": 10**20}, "response_created_at", None,
                     id="created-beyond-calendars"),
    ],
)
def test_odd_upstream_values_are_stored(
    engine: Engine, changes: dict[str, Any], column: str, stored: object
) -> None:
    recorder = Recorder(engine)
    probe_id = recorder.save(result(**changes))
    with engine.connect() as connection:
        field = next(c for c in PROBE_FIELDS if c.key == column)
        value = connection.execute(select(field).select_from(PROBES_WITH_ANSWERS)
                                   .where(ProbeRow.id == probe_id)).scalar_one()
    assert value == stored


def test_nul_and_surrogates_inside_choices_and_headers_are_stored(engine: Engine) -> None:
    odd = result(
        choices=(Choice(index=0, finish_reason="st\x00op", content="a\x00b\udc80c"),),
        response_headers={"x-odd": "v\x00\ud83d"},
    )
    probe_id = Recorder(engine).save(odd)
    [record] = probe_records(engine, [probe_id])
    assert record["choices"] == [{"index": 0, "finish_reason": "st\ufffdop",
                                  "content": "a\ufffdb\ufffdc"}]
    assert record["response_headers"]["x-odd"] == "v\ufffd\ufffd"
    assert record["raw_response"] == odd.raw_response.decode()  # the body stays as received


def test_a_lone_surrogate_survives_the_spool() -> None:
    odd = result(model="gpt-\ud800", choices=(Choice(index=0, finish_reason=None,
                                                     content="\udfff"),))
    assert decode(encode(odd)) == odd


def test_errors_are_classified_as_poison_or_unavailable(engine: Engine) -> None:
    recorder = Recorder(engine)
    for record in (poison(), naive()):
        with pytest.raises(Exception) as raised:
            recorder.save(record)
        assert classify(raised.value) is Failure.POISON, raised.value
    with pytest.raises(Exception) as raised:
        Recorder(engine.execution_options(schema_translate_map={None: "nowhere"})).save(result())
    assert classify(raised.value) is Failure.UNAVAILABLE, raised.value
    assert classify(OverflowError("int too large to convert to SQLite INTEGER")) is Failure.POISON
    assert classify(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")) \
        is Failure.POISON
    assert classify(ValueError("a bug")) is None


def test_a_row_deleted_under_the_cache_does_not_make_a_good_result_poison(engine: Engine) -> None:
    recorder = Recorder(engine)
    recorder.save(result(target_name="gone"))  # caches the target's id
    with engine.begin() as connection:
        connection.execute(delete(TargetRow).where(TargetRow.name == "gone"))
    later = result(target_name="gone")
    assert recorder.save(later) == recorder.probe_id(later.uid)


@pytest.fixture
def daemon(engine: Engine, make_settings: MakeSettings, tmp_path: Path) -> Iterator[Daemon]:
    settings = make_settings({"name": "a"}, {"name": "b"})
    made = Daemon(settings, Recorder(engine), Spool(tmp_path / "spool.jsonl"))
    yield made
    made.close()


def for_target(daemon: Daemon, name: str, **changes: Any) -> dict[str, Any]:
    target = next(t for t in daemon.settings.targets if t.name == name)
    return {"target_name": name, "config_hash": target.config_hash, **changes}


def quarantined_uids(spool: Spool) -> list[str]:
    if not spool.quarantine_path.exists():
        return []
    return [decode(line).uid for line in spool.quarantine_path.read_bytes().splitlines()
            if line.strip()]


def stored_uids(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.execute(select(ProbeRow.uid)).scalars())


@pytest.mark.parametrize("make_poison", [poison, naive], ids=["constraint", "unbindable"])
def test_a_poison_record_is_quarantined_and_the_next_ones_are_stored_directly(
    engine: Engine, daemon: Daemon, logged: Lines, make_poison: Any
) -> None:
    bad = make_poison(**for_target(daemon, "a"))
    assert daemon.store(bad) is None
    assert quarantined_uids(daemon.spool) == [bad.uid]
    good = [result(**for_target(daemon, name)) for name in ("b", "a", "b")]
    assert all(daemon.store(item) is not None for item in good)
    assert daemon.spool.empty() and not daemon.spool.path.exists()
    assert stored_uids(engine) == {item.uid for item in good}
    [line] = logged.matching("quarantined")
    assert bad.uid in line and ("IntegrityError" in line or "StatementError" in line)
    assert not logged.matching("database unavailable")


def test_a_target_the_database_refuses_does_not_hold_up_the_others(
    postgres_url: str, make_settings: MakeSettings, tmp_path: Path, logged: Lines
) -> None:
    # PostgreSQL only: SQLite does not enforce a name's length, so it refuses no target.
    empty_postgres(postgres_url)
    engine = db.open_store(postgres_url)
    long_name = "t" * 201  # targets.name is varchar(200)
    settings = make_settings({"name": long_name}, {"name": "b"})
    daemon = Daemon(settings, Recorder(engine), Spool(tmp_path / "spool.jsonl"))
    try:
        assert daemon.register()
        good = result(**for_target(daemon, "b"))
        bad = result(**for_target(daemon, long_name))
        assert daemon.store(bad) is None and daemon.store(good) is not None
        assert quarantined_uids(daemon.spool) == [bad.uid]
        assert stored_uids(engine) == {good.uid}
        assert logged.matching(f"target {long_name} cannot be registered: database refused")
        assert not logged.matching("database unavailable")
    finally:
        daemon.close()
        engine.dispose()


def test_many_threads_storing_before_the_targets_are_registered_lose_nothing(
    postgres_url: str, make_settings: MakeSettings, tmp_path: Path, logged: Lines
) -> None:
    """As after a reload that adds targets, or a database that was down at start: every
    probe thread finds the targets unregistered and stores at once. A target id cached by
    one thread's registration before it committed made another's fail its foreign key, each
    logged as a target the database refuses (the results got in only through save's retry)."""
    empty_postgres(postgres_url)
    engine = db.open_store(postgres_url)
    settings = make_settings(*({"name": f"t{i:03d}"} for i in range(120)))
    daemon = Daemon(settings, Recorder(engine), Spool(tmp_path / "spool.jsonl"))
    results = [result(**for_target(daemon, target.name)) for target in settings.targets]
    try:
        with ThreadPoolExecutor(24) as pool:
            ids = list(pool.map(daemon.store, results))
        assert None not in ids
        assert stored_uids(engine) == {item.uid for item in results}
        assert quarantined_uids(daemon.spool) == []
        assert not logged.matching("cannot be registered")
    finally:
        daemon.close()
        engine.dispose()


def test_a_drain_quarantines_the_poison_records_and_stores_the_rest(
    engine: Engine, daemon: Daemon, logged: Lines
) -> None:
    spooled = [result(**for_target(daemon, "ab"[i % 2])) for i in range(7)]
    spooled[2] = poison(**for_target(daemon, "a"))
    spooled[5] = naive(**for_target(daemon, "b"))
    for item in spooled:
        daemon.spool.append(item)
    daemon._spooling = True  # as after an outage
    assert daemon.drain() == 5
    good = {item.uid for i, item in enumerate(spooled) if i not in (2, 5)}
    assert stored_uids(engine) == good
    assert quarantined_uids(daemon.spool) == [spooled[2].uid, spooled[5].uid]
    assert daemon.spool.empty() and not daemon._spooling
    assert len(logged.matching("quarantined")) == 2
    assert not logged.matching("database unavailable")
    # The next result goes straight to the database.
    assert daemon.store(result(**for_target(daemon, "a"))) is not None


def test_a_batch_of_poison_only_is_quarantined_whole(tmp_path: Path, engine: Engine) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    bad = [poison(), naive()]
    for item in bad:
        spool.append(item)
    assert spool.drain(Recorder(engine).save_many) == 0
    assert quarantined_uids(spool) == [item.uid for item in bad]
    assert spool.empty()


def test_an_unavailable_database_keeps_the_batch_in_the_spool(tmp_path: Path) -> None:
    from sqlalchemy.exc import OperationalError

    spool = Spool(tmp_path / "spool.jsonl")
    spool.append(result())

    def down(batch: list[ProbeResult]) -> None:
        raise OperationalError("INSERT", {}, Exception("connection refused"))

    with pytest.raises(OperationalError):
        spool.drain(down)
    assert spool.backlog() == 1 and quarantined_uids(spool) == []


# --- a spool that cannot be written (disk full) ------------------------------------------------


def full_disk(path: Path) -> None:
    """Writes to `path` fail with ENOSPC, as on a full disk (Linux's /dev/full)."""
    path.symlink_to("/dev/full")


def test_a_full_disk_keeps_results_in_memory_and_writes_them_when_it_frees(
    tmp_path: Path, logged: Lines
) -> None:
    path = tmp_path / "spool.jsonl"
    full_disk(path)
    spool = Spool(path)
    held = [result() for _ in range(3)]
    for item in held:
        spool.append(item)  # never raises
    [line] = logged.matching("spool cannot be written")
    assert "No space left on device" in line and "keeping up to 1000 results in memory" in line
    assert spool.backlog() == 3 and not spool.empty()
    path.unlink()  # the disk frees
    later = result()
    spool.append(later)
    taken: list[ProbeResult] = []
    assert spool.drain(taken.extend) == 4
    assert [r.uid for r in taken] == [r.uid for r in [*held, later]]
    assert logged.matching("3 results kept in memory are safe (wrote them to the spool)")
    assert len(logged.matching("spool cannot be written")) == 1


def test_past_the_memory_bound_the_oldest_are_dropped_and_counted(
    tmp_path: Path, logged: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "MEMORY_RESULTS", 2)
    path = tmp_path / "spool.jsonl"
    full_disk(path)
    spool = Spool(path)
    results = [result() for _ in range(5)]
    for item in results:
        spool.append(item)
    assert spool.backlog() == 2
    assert len(logged.matching("dropping the oldest")) == 1
    path.unlink()
    taken: list[ProbeResult] = []
    spool.drain(taken.extend)
    assert [r.uid for r in taken] == [r.uid for r in results[3:]]
    assert logged.matching("3 results were lost while memory was full")


def test_the_database_takes_what_memory_holds_while_the_disk_is_still_full(
    tmp_path: Path, engine: Engine
) -> None:
    path = tmp_path / "spool.jsonl"
    full_disk(path)
    spool = Spool(path)
    results = [result() for _ in range(3)]
    results[1] = poison()
    for item in results:
        spool.append(item)
    spool.quarantine_path = tmp_path / "quarantine"  # beside the full disk
    assert spool.drain(Recorder(engine).save_many) == 2
    assert spool.empty()
    assert stored_uids(engine) == {results[0].uid, results[2].uid}
    assert quarantined_uids(spool) == [results[1].uid]


# --- a SQLite file monitor cannot use -----------------------------------------------------------


@pytest.fixture
def sqlite_config(tmp_path: Path, sim_server: Simulator) -> Any:
    def make(url: str) -> Path:
        return write_config(
            tmp_path / "monitor.toml",
            [{"name": "a", "provider": "openai-compatible", "base_url": f"{sim_server.url}/v1",
              "model": "gpt-4o"}],
            url,
        )
    return make


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


NOT_A_DATABASE = "not a SQLite database (file is corrupt or another format)"


@pytest.mark.parametrize(
    "command",
    [["status"], ["probe"], ["report"], ["alerts"], ["prune"], ["db", "upgrade"],
     ["export", "-o", "out.jsonl"]],
    ids=lambda c: " ".join(c),
)
def test_a_corrupt_sqlite_file_is_one_line_and_exit_one(
    tmp_path: Path, sqlite_config: Any, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "monitor.db").write_bytes(b"this is no database, just some words " * 40)
    config = sqlite_config("sqlite:///monitor.db")
    outcome = invoke(*command, "--config", str(config))
    assert outcome.exit_code == 1
    assert outcome.output.strip() == f"Error: monitor.db: {NOT_A_DATABASE}"


def test_a_read_only_sqlite_file_is_one_line_when_a_command_writes(
    tmp_path: Path, sqlite_config: Any, sim: SimClient
) -> None:
    path = tmp_path / "monitor.db"
    db.upgrade(f"sqlite:///{path}")
    config = sqlite_config(f"sqlite:///file:{path}?mode=ro&uri=true")
    assert invoke("status", "--config", str(config)).exit_code == 0  # reading is fine
    for command in (["probe"], ["report"]):
        outcome = invoke(*command, "--config", str(config))
        assert outcome.exit_code == 1, outcome.output
        assert outcome.output.strip() == f"Error: {path} is read-only"


@pytest.mark.parametrize("trouble", ["corrupt", "read-only"])
def test_run_starts_and_spools_when_the_sqlite_file_cannot_be_written(
    tmp_path: Path, sqlite_config: Any, sim: SimClient, trouble: str
) -> None:
    path = tmp_path / "monitor.db"
    if trouble == "corrupt":
        path.write_bytes(b"\x00garbage" * 100)
        url, said = f"sqlite:///{path}", f"{path}: {NOT_A_DATABASE}"
    else:
        db.upgrade(f"sqlite:///{path}")
        url, said = f"sqlite:///file:{path}?mode=ro&uri=true", f"{path} is read-only"
    config = sqlite_config(url)
    spool = tmp_path / "spool.jsonl"
    finished = subprocess.run(
        [sys.executable, "-m", "monitor", "run", "--once", "--config", str(config),
         "--spool", str(spool)],
        check=False, capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert finished.returncode == 0, finished.stderr
    assert "Traceback" not in finished.stderr
    assert said in finished.stderr
    assert Spool(spool).backlog() == 1
