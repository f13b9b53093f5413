"""Every default monitor applies, each with the reason it was chosen.

Target defaults are written as they would be in monitor.toml, and config/ reads them with the
same checks as the file, so a default can never be a value the file itself would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import Any, Final

from monitor.domain import Provider

# Used when neither --config nor MONITOR_CONFIG names a file: the current directory, like .env.
CONFIG_PATH: Final = "monitor.toml"

# A single file needs no server, which suits the common case of one machine.
DATABASE_URL: Final = "sqlite:///monitor.db"

# Lowest layer under [defaults] and each [[targets]] entry.
TARGET: Final[Mapping[str, Any]] = MappingProxyType(
    {
        # The API most people monitor first.
        "provider": "openai",
        # 288 probes a day: drift shows within minutes while the canary stays cheap.
        "interval": "5m",
        # Long enough for a slow but healthy reply; a probe stuck longer is an incident itself.
        "timeout": "30s",
        # The simplest request; streaming is opt-in, for time-to-first-token and tokens/s.
        "stream": False,
        # A capped canary reply is a few KB; the limit bounds memory when a server misbehaves.
        "max_response_bytes": 1024 * 1024,
        # A prompt with one right answer, so a change in the reply is a change in the model.
        "messages": [{"role": "user", "content": "Reply with the single word: pong"}],
        # A deterministic canary (temperature 0, fixed seed) makes output drift visible.
        "params": {"temperature": 0, "seed": 7},
    }
)

# The reply cap added to params unless the user sets one: cheap, but no lower, because OpenAI's
# reasoning models and some Azure deployments refuse caps under 16.
MAX_OUTPUT_TOKENS: Final = 16

# The parameter that carries the cap: reasoning models reject max_tokens, while llama.cpp, older
# vLLM and Ollama know only max_tokens.
CAP_KEY: Final[Mapping[Provider, str]] = MappingProxyType(
    {
        Provider.OPENAI: "max_completion_tokens",
        Provider.AZURE: "max_completion_tokens",
        Provider.OPENAI_COMPATIBLE: "max_tokens",
        Provider.ANTHROPIC: "max_tokens",  # required by the Messages API
    }
)

# OpenAI and Anthropic have one well-known endpoint; Azure resources and compatible servers are
# per user.
BASE_URL: Final[Mapping[Provider, str]] = MappingProxyType(
    {Provider.OPENAI: "https://api.openai.com/v1", Provider.ANTHROPIC: "https://api.anthropic.com"}
)

# Anthropic's `anthropic-version` header (the `api_version` key): the version its documentation
# and SDKs send; pinned, so that a new one is a config change in history, not a silent drift.
API_VERSION: Final[Mapping[Provider, str]] = MappingProxyType({Provider.ANTHROPIC: "2023-06-01"})

# Built-in params the Messages API refuses ("Extra inputs are not permitted"): dropped from the
# built-in defaults for Anthropic targets, and refused when a file sets them for one.
OPENAI_ONLY_PARAMS: Final = ("seed", "n", "max_completion_tokens", "presence_penalty",
                             "frequency_penalty", "reasoning_effort", "stop")

# The variables the official SDKs read, so an existing setup works unchanged. Compatible servers
# often need no key, so they get none unless api_key_env says otherwise.
API_KEY_ENV: Final[Mapping[Provider, str]] = MappingProxyType(
    {Provider.OPENAI: "OPENAI_API_KEY", Provider.AZURE: "AZURE_OPENAI_API_KEY",
     Provider.ANTHROPIC: "ANTHROPIC_API_KEY"}
)


# [retention] raw. Raw bodies and headers are for looking into recent probes; a month covers any
# investigation of a drift alert. Aggregates and fingerprint history are kept forever.
RAW_RETENTION_MS: Final = 30 * 86_400_000


# --- the daemon ----------------------------------------------------------------------------

# Probing is I/O-bound; this bounds sockets and threads, not CPU.
MAX_PARALLEL_PROBES: Final = 16

# Every slot starts within one interval of the daemon's start, spread by a stable hash of the
# target's name, so a hundred targets do not fire in the same second (and a restart keeps them
# where they were); a little jitter on top keeps them from re-aligning with other schedules.
JITTER_S: Final = 0.1
# Results spooled during an outage reach the database within seconds of its return.
DRAIN_EVERY_S: Final = 5.0
# Batches per drain call: bounded, so one call never holds the database for long.
DRAIN_ROUNDS: Final = 20
# A drain call ends between batches after this long (under DRAIN_EVERY_S, so the drain job
# never overruns its own interval); the next call carries on where it stopped.
DRAIN_BUDGET_S: Final = 4.0
# At shutdown the final drain gets what is left of the longest probe timeout after the
# signal, but at least this (enough for the skipped slots and a batch or two); what is left
# is drained by the next start.
SHUTDOWN_DRAIN_MIN_S: Final = 0.5
# Rollups trail the probes by at most this; a batch every few seconds costs less than a
# fold after every probe, and reports catch up the rest themselves.
ROLLUP_EVERY_S: Final = 5.0
# Retention runs daily, first a minute after start (not at once: a restart loop must not
# turn into a pruning loop, and the first probes matter more).
PRUNE_FIRST_AFTER: Final = timedelta(minutes=1)
# Notifications wait `group_wait` anyway; a second is fine grain for that and for retries.
DISPATCH_EVERY_S: Final = 1.0
# `monitor status` counts an instance alive while its heartbeat is younger than three beats.
HEARTBEAT_EVERY_S: Final = 10.0


# `monitor status` and the report fold a target's stored probes themselves when the detectors'
# saved state is missing or was made under other thresholds (the daemon does the same at the
# target's next probe): up to this many, about a second's work; beyond, they say it is pending.
WATCH_FOLD_MAX_PROBES: Final = 20_000


# --- the HTTP servers (httpd) -----------------------------------------------------------------

# stop() waits this long for each connection thread after shutting its socket; one still busy
# after that is abandoned (a daemon thread), so a stuck handler never hangs a shutdown.
HTTP_JOIN_TIMEOUT_S: Final = 5.0


# --- the dashboard (web/) ---------------------------------------------------------------------

# Probes come minutes apart; a faster refresh only costs queries.
DASHBOARD_REFRESH_S: Final = 60
# From connecting to the end of its headers, a client gets this long: a GET is a few hundred
# bytes, so ten seconds is plenty over any network, and a client that trickles its request a
# byte at a time (slowloris) is cut off instead of holding a thread for as long as it likes
# (a socket timeout alone starts again with every byte).
REQUEST_READ_TIMEOUT_S: Final = 10.0
# A client that stops reading the answer frees its thread after this.
WRITE_TIMEOUT_S: Final = 30
# `monitor status` and /healthz count an instance alive while its heartbeat is younger than
# three beats: one late beat is a busy machine, three are a stopped daemon.
ALIVE_WITHIN_S: Final = 3 * HEARTBEAT_EVERY_S


# --- OpenTelemetry export (otel/) -------------------------------------------------------------

# Spans waiting for the exporter while the collector is slow or down. A span is a few KB, so
# the queue holds at most ~10 MB; that is 34 hours of one target probed every minute, or 20
# minutes of a hundred. Past it the oldest spans are dropped: the probes themselves are in
# the database whatever happens to their telemetry.
OTEL_MAX_QUEUED_SPANS: Final = 2048
# A collector that stays down fails every batch: one log line a minute says so, with the
# count, instead of one line per batch and retry.
OTEL_FAILURE_LOG_EVERY_S: Final = 60.0
# At shutdown, what is queued gets this long to reach the collector; a stop never waits on a
# dead one for longer.
OTEL_SHUTDOWN_FLUSH_S: Final = 5.0

# --- the logging proxy (proxy/) ---------------------------------------------------------------

# `monitor proxy --port`: clear of the dashboard's 8765 (`monitor serve`), so both can run.
PROXY_PORT: Final = 8788
# Reaching the upstream: a healthy API answers a TCP/TLS handshake in well under a second, and a
# call that cannot connect in ten is better answered 502 than left hanging.
PROXY_CONNECT_TIMEOUT_S: Final = 10.0
# Between two reads of the upstream's answer. Reasoning models think for minutes before the
# first byte; the app's own timeout is the one that should decide, so this is only a backstop.
PROXY_READ_TIMEOUT_S: Final = 600.0
# An idle app connection (keep-alive) is closed after this, so its thread ends.
PROXY_IDLE_TIMEOUT_S: Final = 300.0
# Idle upstream connections kept per upstream for reuse; more concurrent calls open more, which
# are closed rather than kept once the burst is over.
PROXY_POOL_SIZE: Final = 32
# On SIGTERM/SIGINT calls in flight get this long to finish (streams included); a second
# signal exits at once.
PROXY_DRAIN_TIMEOUT_S: Final = 30.0
# Exchanges waiting for the logging sink's worker; beyond, new ones are counted and dropped,
# never waited for (the app's call has already been answered).
PROXY_SINK_QUEUE: Final = 10_000
# `monitor proxy --spool`: where records wait while the database is unreachable.
PROXY_SPOOL: Final = "monitor-proxy-spool.jsonl"
