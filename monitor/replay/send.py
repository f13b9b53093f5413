"""Re-send a stored request and keep the new answer beside the old one (`monitor replay`).

A replay sends the probe's stored request_payload as it was stored. It goes to the probe's own
target, or to another configured one (`--to`), using that target's URL, key, timeout and
response cap. The payload is only changed when `--to` names a target with a different model:
then `model` becomes that target's model (or is dropped for an Azure deployment), and
`Plan.model_change` records the change so it can be shown. Every answer is stored as a new probe of
the target it went to, with `replay_of` pointing at the original.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Engine

from monitor import probe
from monitor.config.targets import effective_config
from monitor.domain import CheckResult, Settings, Target
from monitor.errors import MonitorError
from monitor.probe import providers
from monitor.probe.checks import evaluate, stored_answer
from monitor.store import check_results, replays
from monitor.store.replays import LinkedWriter, StoredAnswer
from monitor.store.shared import canonical_json


class ReplayError(MonitorError):
    """A stored request cannot be replayed as asked (unknown probe or target, odd payload)."""


@dataclass(frozen=True)
class Plan:
    """How one stored request is re-sent: the destination target with its model, messages and
    params rebuilt so that `providers.payload(target)` is exactly the payload to send."""

    target: Target
    config: dict[str, Any]  # what the replay's configuration row records
    model_change: tuple[str | None, str | None] | None  # (stored, sent) when --to changed it


@dataclass(frozen=True)
class Outcome:
    """One `monitor replay PROBE_ID`: the original answer and each replay's, oldest first."""

    original: StoredAnswer
    destination: str
    model_change: tuple[str | None, str | None] | None
    replays: tuple[StoredAnswer, ...]
    # The destination's checks (as configured now) on the original answer, then on each
    # replay's: the same checks on both sides, whatever the original was judged by.
    checks: tuple[tuple[CheckResult, ...], ...]


def plan(payload: dict[str, Any], source: str, destination: Target) -> Plan:
    """Rebuild `destination` to send `payload` (a probe of target `source`); ReplayError if
    the payload is not one that monitor can send unchanged."""
    body = copy.deepcopy(payload)
    change = None
    if destination.name != source and body.get("model") != destination.model:
        change = (body.get("model"), destination.model)
        if destination.model is None:
            body.pop("model", None)  # an Azure deployment decides the model
        else:
            body["model"] = destination.model
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ReplayError("the stored payload has no list of messages to send")
    stream = body.get("stream") is True
    params = {k: v for k, v in body.items() if k not in ("model", "messages")}
    if stream:
        params.pop("stream")
        params.pop("stream_options", None)
    target = replace(destination, model=body.get("model"), messages=tuple(messages),
                     params=params, stream=stream)
    # probe.run builds the payload from the target; refuse rather than send something else.
    if providers.payload(target) != body:
        raise ReplayError("the stored payload cannot be re-sent exactly as stored "
                          "(monitor always sends stream_options.include_usage with a stream)")
    config = effective_config(target)
    digest = hashlib.sha256(canonical_json(config).encode()).hexdigest()
    return Plan(replace(target, config_hash=digest), config, change)


def destination(settings: Settings, source: str, to: str | None) -> Target:
    """The configured target a replay goes to: `to`, else the original's own target; for
    recorded traffic ("route/model", monitor proxy), which has no key of its own (the proxy
    never keeps the app's), the one configured target of that model."""
    name = to or source
    for target in settings.targets:
        if target.name == name:
            return target
    configured = ", ".join(t.name for t in settings.targets) or "none"
    if to is None and "/" in source:
        model = source.rsplit("/", 1)[1]
        serving = [t for t in settings.targets if t.model == model]
        if len(serving) == 1:
            return serving[0]
        raise ReplayError(f"{source} is recorded traffic, sent with the app's own key, which "
                          f"monitor never keeps; {len(serving)} configured targets have model "
                          f"{model!r}: name the one to send it to with --to (configured: "
                          f"{configured})")
    if to is None:
        raise ReplayError(f"the probe was sent by target {source!r}, which "
                          f"{settings.config_path} no longer configures (it has: {configured}); "
                          "name a target to send it to with --to")
    raise ReplayError(f"unknown target {to!r}; {settings.config_path} has: {configured}")


def replay_probe(engine: Engine, settings: Settings, probe_id: int, to: str | None = None,
                 repeat: int = 1) -> Outcome:
    """Send probe `probe_id`'s stored request `repeat` times, one after another, storing each
    answer linked to it."""
    stored = replays.stored_request(engine, probe_id)
    if stored is None:
        raise ReplayError(f"no probe #{probe_id} in the database")
    sent_by = stored.answer.target
    chosen = plan(stored.payload, sent_by, destination(settings, sent_by, to))
    writer = LinkedWriter(engine)
    ids = []
    judged = [_judged(engine, chosen.target, stored.answer)]
    with providers.new_session() as session:
        for _ in range(repeat):
            result = probe.run(chosen.target, session)  # judged by the target's checks
            ids.append(writer.save(result, chosen.config, probe_id))
            judged.append(result.checks)
    found = replays.answers(engine, ids)
    return Outcome(stored.answer, chosen.target.name, chosen.model_change,
                   tuple(found[i] for i in ids), tuple(judged))


def _judged(engine: Engine, target: Target, original: StoredAnswer) -> tuple[CheckResult, ...]:
    """The target's checks on a stored answer."""
    if not target.checks:
        return ()
    with engine.connect() as connection:
        tokens, choices = check_results.answers(connection, [original.probe_id])[
            original.probe_id]
    return evaluate(target.checks, stored_answer(
        original.ok, original.content, original.finish_reason, tokens, original.total_ms,
        choices))
