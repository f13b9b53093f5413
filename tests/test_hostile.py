"""Probing a hostile upstream (tests/hostile.py): the key reaches no other host and is stored or
printed nowhere, every probe ends within its timeout, memory stays bounded, and every answer
becomes a stored probe on each database."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from monitor import probe
from monitor.cli import cli
from monitor.config.targets import effective_config
from monitor.domain import ErrorKind, ProbeResult, Target
from monitor.probe import providers
from monitor.probe.scrub import Scrubber
from monitor.render import text as report
from monitor.replay.batch import BatchSpec, run_batch
from monitor.replay.send import replay_probe
from monitor.store import blobs, codec
from monitor.store.models import Base, ProbeRow
from monitor.store.probe_reads import probe_records
from monitor.store.records import Recorder
from tests.conftest import TEST_KEY, MakeSettings, write_config
from tests.hostile import HostileServer, bomb

MakeTarget = Callable[..., Target]
TIMEOUT_S = 2.0
SLACK_S = 1.0  # the bound is the timeout plus one second, on a loaded machine
RSS_LIMIT_MB = 150

# Every form of the key that must not be stored or printed.
FORMS = {
    "exact": TEST_KEY,
    "upper": TEST_KEY.upper(),
    "base64": base64.b64encode(TEST_KEY.encode()).decode().rstrip("="),
    "base64url": base64.urlsafe_b64encode(TEST_KEY.encode()).decode().rstrip("="),
    "bearer base64": base64.b64encode(b"Bearer " + TEST_KEY.encode()).decode().rstrip("="),
    "basic": base64.b64encode(b"user:" + TEST_KEY.encode()).decode().rstrip("="),
    "middle": TEST_KEY[8:24],
}


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[HostileServer]:
    """Another host: a redirect points here, and no request may ever arrive."""
    with HostileServer() as server:
        yield server


@pytest.fixture(scope="module")
def hostile_server(elsewhere: HostileServer) -> Iterator[HostileServer]:
    with HostileServer(elsewhere=elsewhere.url) as server:
        yield server


@pytest.fixture
def hostile(hostile_server: HostileServer, elsewhere: HostileServer) -> HostileServer:
    hostile_server.requests.clear()
    elsewhere.requests.clear()
    return hostile_server


def hostile_target(server: HostileServer, attack: str, provider: str = "openai",
                   **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": attack, "provider": provider,
                             "api_key_env": "HOSTILE_KEY", "timeout": f"{TIMEOUT_S:g}s"}
    if provider == "azure":
        entry.update(base_url=f"http://localhost:{server.port}", deployment=attack,
                     api_version="2024-10-21")
    else:
        entry.update(base_url=f"http://localhost:{server.port}/v1", model=attack)
    return {**entry, **overrides}


def make(make_target: MakeTarget, server: HostileServer, attack: str, **overrides: Any) -> Target:
    return make_target(**hostile_target(server, attack, **overrides),
                       environ={"HOSTILE_KEY": TEST_KEY})


def run(target: Target) -> tuple[ProbeResult, float]:
    began = time.monotonic()
    with providers.new_session() as session:
        result = probe.run(target, session)
    return result, time.monotonic() - began


def store(engine: Engine, target: Target, result: ProbeResult) -> dict[str, Any]:
    recorder = Recorder(engine)
    recorder.register(target.name, target.config_hash, effective_config(target))
    return probe_records(engine, [recorder.save(result)])[0]


def _decompressed(blob: bytes) -> bytes:
    """A codec blob (raw bodies, headers) or plain zlib (detector snapshots), decompressed."""
    try:
        return codec.decompress(blob)
    except (KeyError, IndexError, zlib.error):
        pass
    try:
        return zlib.decompress(blob)
    except zlib.error:
        return b""


def stored_text(engine: Engine) -> str:
    """Every stored byte of every table, compressed blobs decompressed (a probe's raw headers
    and body through its dictionary and columns, as every reader decodes them)."""
    parts: list[str] = []
    dictionaries = blobs.Dictionaries()
    with engine.connect() as connection:
        for probe_row in connection.execute(ProbeRow.__table__.select()):
            parts.append(json.dumps(blobs.headers(connection, probe_row, dictionaries)))
            parts.append(blobs.body(connection, probe_row, dictionaries).decode("latin-1"))
        for table in Base.metadata.sorted_tables:
            for row in connection.execute(table.select()):
                for value in row:
                    if isinstance(value, memoryview):
                        value = bytes(value)
                    if isinstance(value, bytes):
                        parts.append(value.decode("latin-1"))
                        parts.append(_decompressed(value).decode("latin-1"))
                    elif isinstance(value, str):
                        parts.append(value)
                    else:
                        parts.append(json.dumps(value, default=str))
    return "\n".join(parts)


def assert_no_key(haystack: str, where: str) -> None:
    for form, needle in FORMS.items():
        assert needle not in haystack, f"the key ({form}) is in the {where}"
    assert TEST_KEY.lower() not in haystack.lower(), f"the key (any case) is in the {where}"


# --- redirects ------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "azure", "openai-compatible"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_redirect_to_another_host_is_recorded_not_followed(
    hostile: HostileServer, elsewhere: HostileServer, make_target: MakeTarget, engine: Engine,
    provider: str, stream: bool,
) -> None:
    target = make(make_target, hostile, "redirect", provider=provider, stream=stream)
    result, _ = run(target)

    assert result.error_kind is ErrorKind.UNEXPECTED_REDIRECT
    assert result.http_status == 307
    assert result.error_detail == (
        f"HTTP 307 Temporary Redirect: redirect to 127.0.0.1:{elsewhere.port} not followed")
    assert len(hostile.requests) == 1 and elsewhere.requests == []
    record = store(engine, target, result)
    assert record["error_kind"] == "unexpected_redirect"


def test_a_probe_session_cannot_be_told_to_follow_redirects(
    hostile: HostileServer, elsewhere: HostileServer, make_target: MakeTarget
) -> None:
    target = make(make_target, hostile, "redirect", provider="azure")
    with providers.new_session() as session:
        response = session.post(providers.chat_url(target), json={},
                                 auth=providers.key_auth(target), allow_redirects=True)
        assert response.status_code == 307
    assert elsewhere.requests == []


def test_replays_never_follow_a_redirect(
    hostile: HostileServer, elsewhere: HostileServer, make_settings: MakeSettings,
    engine: Engine, database_url: str,
) -> None:
    settings = make_settings(hostile_target(hostile, "redirect", provider="azure"),
                             database_url=database_url, HOSTILE_KEY=TEST_KEY)
    target = settings.targets[0]
    result, _ = run(target)
    original = store(engine, target, result)["id"]

    outcome = replay_probe(engine, settings, original, repeat=2)
    now = datetime.now(UTC)
    summary = run_batch(engine, BatchSpec("redirect", target, "1h", None,
                                          now - timedelta(hours=1), None, None, 2),
                        stop=threading.Event())

    assert [a.error_kind for a in outcome.replays] == ["unexpected_redirect"] * 2
    assert summary.failed == summary.items == 1  # the original (replays are not re-replayed)
    assert len(hostile.requests) == 4 and elsewhere.requests == []
    with engine.connect() as connection:
        kinds = connection.execute(select(ProbeRow.error_kind)).scalars().all()
    assert kinds == ["unexpected_redirect"] * 4


# --- the deadline ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attack", "stream"),
    [
        pytest.param("slow-headers", False, id="1-byte-per-s-headers"),
        pytest.param("slow-body", False, id="1-byte-per-s-body"),
        pytest.param("slow-stream", True, id="1-byte-per-s-stream"),
    ],
)
def test_a_trickling_server_cannot_outlast_the_timeout(
    hostile: HostileServer, make_target: MakeTarget, engine: Engine, attack: str, stream: bool
) -> None:
    target = make(make_target, hostile, attack, stream=stream)
    result, wall_s = run(target)

    assert result.error_kind is ErrorKind.READ_TIMEOUT, result.error_detail
    assert wall_s < TIMEOUT_S + SLACK_S
    if result.total_ms is not None:
        assert result.total_ms < (TIMEOUT_S + SLACK_S) * 1000
    assert store(engine, target, result)["error_kind"] == "read_timeout"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_tls_handshake_dripped_a_byte_a_second_cannot_outlast_the_timeout(
    make_target: MakeTarget, engine: Engine, stream: bool
) -> None:
    # A server that answers the ClientHello with the header of a 16 KB handshake record and
    # then one byte a second: every read returns data, so only a total deadline ends it.
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)

    def drip() -> None:
        connections = []
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connections.append(connection)
            with contextlib.suppress(OSError):
                connection.sendall(b"\x16\x03\x03\x40\x00")
                while not stop.wait(1.0):
                    connection.sendall(b"\x00")
        for connection in connections:
            connection.close()

    server = threading.Thread(target=drip, daemon=True)
    server.start()
    try:
        port = listener.getsockname()[1]
        target = make_target(name="tls-drip", provider="openai-compatible",
                             base_url=f"https://127.0.0.1:{port}/v1", model="tls-drip",
                             timeout=f"{TIMEOUT_S:g}s", stream=stream)
        result, wall_s = run(target)
    finally:
        stop.set()
        server.join(10)
        listener.close()
    assert not result.ok
    assert result.error_kind in (ErrorKind.CONNECT_TIMEOUT, ErrorKind.READ_TIMEOUT), (
        result.error_kind, result.error_detail)
    assert wall_s < TIMEOUT_S + SLACK_S
    assert store(engine, target, result)["ok"] is False


# --- memory ---------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, resource, sys
    from monitor import probe
    from monitor.probe import providers
    from monitor.domain import Provider, Target
    url, model, stream = sys.argv[1], sys.argv[2], sys.argv[3] == "stream"
    target = Target(name=model, provider=Provider.OPENAI_COMPATIBLE, base_url=url, model=model,
                    messages=({"role": "user", "content": "hi"},), params={}, stream=stream,
                    timeout_ms=15000, interval_ms=60000, max_response_bytes=1024 * 1024)
    with providers.new_session() as session:
        result = probe.run(target, session)
    # VmHWM is this process's own peak: ru_maxrss also counts the parent's memory, which the
    # child inherits at fork (and Linux keeps across exec).
    status = open("/proc/self/status").read()
    peak_kb = int(status.split("VmHWM:")[1].split()[0])
    print(json.dumps({"kind": result.error_kind, "raw": len(result.raw_response),
                      "total_ms": result.total_ms, "peak_mb": peak_kb / 1024}))
""")


@pytest.mark.parametrize(
    ("attack", "stream"),
    [
        pytest.param("huge-sse", True, id="200MB-event-stream"),
        pytest.param("gzip-bomb", False, id="gzip-bomb"),
        pytest.param("gzip-bomb-stream", True, id="gzip-bomb-stream"),
        pytest.param("endless", True, id="endless-close-delimited"),
    ],
)
def test_a_huge_answer_stops_at_the_cap_in_bounded_memory(
    hostile: HostileServer, attack: str, stream: bool
) -> None:
    if "bomb" in attack:
        bomb("plain" if attack == "gzip-bomb" else "sse")  # built before the clock starts
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, f"{hostile.url}/v1", attack,
         "stream" if stream else "plain"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    outcome = json.loads(completed.stdout)
    print(f"{attack}: child peak RSS {outcome['peak_mb']:.1f} MB, "
          f"total {outcome['total_ms']:.0f} ms")

    assert outcome["kind"] == "body_too_large"
    assert outcome["raw"] == 1024 * 1024
    assert outcome["peak_mb"] < RSS_LIMIT_MB


# --- every answer stored, no key anywhere -----------------------------------------------------


def _ok(**expected: Any) -> Callable[[ProbeResult], None]:
    def check(result: ProbeResult) -> None:
        assert result.ok, result.error_detail
        for name, value in expected.items():
            actual = getattr(result, name) if "." not in name else getattr(
                getattr(result, name.split(".")[0]), name.split(".")[1])
            assert (value(actual) if callable(value) else actual == value), (name, actual)
    return check


def _fails(kind: ErrorKind) -> Callable[[ProbeResult], None]:
    def check(result: ProbeResult) -> None:
        assert result.error_kind is kind, result.error_detail
    return check


def _within(limit: int) -> Callable[[str | None], bool]:
    return lambda value: value is not None and 0 < len(value) <= limit


CASES = [
    pytest.param("echo-content", False, _ok(content="your key is [redacted], and [redacted]"),
                 id="echo-in-content"),
    pytest.param("echo-split", True, _ok(content="your key is [redacted]"),
                 id="echo-split-across-chunks"),
    pytest.param("echo-model", False, _ok(model="[redacted]", system_fingerprint="fp_[redacted]",
                                          response_id="[redacted]"), id="echo-in-model"),
    pytest.param("echo-escaped", False, _ok(content="[redacted]"), id="echo-json-escaped"),
    pytest.param("echo-headers", False, _ok(x_request_id="req_[redacted]"),
                 id="echo-in-headers"),
    pytest.param("echo-error", False, _fails(ErrorKind.AUTH_ERROR), id="echo-in-error"),
    pytest.param("created-huge", False, _ok(response_created=None), id="created-1e17"),
    pytest.param("tokens-huge", False, _ok(**{"usage.prompt_tokens": None,
                                              "usage.total_tokens": None,
                                              "usage.completion_tokens": 1}),
                 id="tokens-2**70"),
    pytest.param("deep-ok", False, _fails(ErrorKind.INVALID_RESPONSE), id="deep-success"),
    pytest.param("deep-error", False, _fails(ErrorKind.HTTP_SERVER_ERROR), id="deep-error"),
    pytest.param("deep-stream", True, _fails(ErrorKind.INVALID_RESPONSE), id="deep-stream"),
    pytest.param("surrogate", False, _ok(content="a\ufffdb", system_fingerprint="fp_\ufffd"),
                 id="lone-surrogate"),
    pytest.param("nul", False, _ok(content="ab", model="gpt-4o", system_fingerprint="fp_",
                                   openai_version="2020-10-01"), id="nul-bytes"),
    pytest.param("long-fields", False, _ok(model=_within(200), system_fingerprint=_within(200),
                                           response_id=_within(200), service_tier=_within(40),
                                           finish_reason=_within(40),
                                           openai_version=_within(40),
                                           x_request_id=_within(200),
                                           openai_organization=_within(200)),
                 id="overlong-strings"),
    pytest.param("huge-headers", False, _ok(**{"rate_limits.limit_requests": None,
                                               "rate_limits.remaining_tokens": None,
                                               "rate_limits.reset_tokens_s": None,
                                               "openai_processing_ms": None}),
                 id="inf-nan-headers"),
]


@pytest.mark.parametrize(("attack", "stream", "check"), CASES)
def test_every_hostile_answer_is_stored_without_the_key(
    hostile: HostileServer, make_target: MakeTarget, engine: Engine,
    attack: str, stream: bool, check: Callable[[ProbeResult], None],
) -> None:
    target = make(make_target, hostile, attack, stream=stream)
    result, wall_s = run(target)

    check(result)
    assert wall_s < TIMEOUT_S + SLACK_S
    assert any(TEST_KEY in h.get("Authorization", "") for _, h in hostile.requests)
    record = store(engine, target, result)
    assert record["ok"] is result.ok
    assert record["error_kind"] == (result.error_kind.value if result.error_kind else None)
    assert record["model"] == result.model
    assert record["system_fingerprint"] == result.system_fingerprint
    assert_no_key(stored_text(engine), "database")
    assert_no_key(report.probe_line(result), "probe line")
    assert_no_key(json.dumps(record, ensure_ascii=False), "stored record")


def test_the_cli_prints_no_echoed_key(
    tmp_path: Path, hostile: HostileServer, database_url: str, engine: Engine
) -> None:
    attacks = ["echo-content", "echo-split", "echo-model", "echo-headers", "echo-error"]
    path = write_config(
        tmp_path / "monitor.toml",
        [hostile_target(hostile, a, stream=a == "echo-split") for a in attacks], database_url)
    (tmp_path / ".env").write_text(f"HOSTILE_KEY={TEST_KEY}\n")
    runner = CliRunner()
    lines = runner.invoke(cli, ["probe", "-c", str(path)], catch_exceptions=False).output
    as_json = runner.invoke(cli, ["probe", "--json", "-c", str(path)],
                            catch_exceptions=False).output

    assert len(json.loads(as_json)) == len(attacks)
    assert "[redacted]" in lines
    assert_no_key(lines, "probe lines")
    assert_no_key(as_json, "--json output")
    assert_no_key(stored_text(engine), "database")


# --- the scrubber on its own ----------------------------------------------------------------

_RAW = TEST_KEY.encode()


@pytest.mark.parametrize(
    "echo",
    [
        pytest.param(TEST_KEY, id="exact"),
        pytest.param(TEST_KEY.upper(), id="upper"),
        pytest.param(f"Bearer {TEST_KEY}", id="bearer"),
        pytest.param(base64.b64encode(_RAW).decode(), id="base64"),
        pytest.param(base64.b64encode(_RAW).decode().rstrip("="), id="base64-unpadded"),
        pytest.param(base64.urlsafe_b64encode(b"?>" + _RAW).decode(), id="base64url"),
        pytest.param("Basic " + base64.b64encode(b"user:" + _RAW).decode(), id="basic"),
        pytest.param("Basic " + base64.b64encode(b"ab:" + _RAW).decode(), id="basic-offset"),
    ],
)
def test_the_scrubber_finds_every_form_of_the_key(echo: str) -> None:
    cleaned = Scrubber([TEST_KEY]).text(f"before {echo} after")
    assert cleaned.startswith("before ") and cleaned.endswith(" after")
    assert "[redacted]" in cleaned
    assert_no_key(cleaned, "scrubbed text")


@pytest.mark.parametrize("encode", [quote, lambda s: quote(s, safe=""), quote_plus],
                         ids=["quote", "quote-all", "quote-plus"])
def test_the_scrubber_finds_a_url_encoded_key(encode: Callable[[str], str]) -> None:
    secret = "az/Key+with=odd chars"
    cleaned = Scrubber([secret]).text("?key=" + encode(secret).lower() + "&x=1")
    assert cleaned == "?key=[redacted]&x=1"


def test_the_scrubber_leaves_other_text_alone() -> None:
    text = "pong " + base64.b64encode(b"nothing secret here at all").decode()
    assert Scrubber([TEST_KEY]).text(text) == text
