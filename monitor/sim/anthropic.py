"""Anthropic's Messages API: POST /v1/messages, plain and streamed, with the scenario's aliases,
latency, rate limits, output variants and faults, in Anthropic's shapes.

Checked in Anthropic's order: key (`x-api-key`), `anthropic-version`, body, model; then faults
and rate limits. As in api.py, everything an answer depends on is drawn from the request's RNG
in a fixed order, so a seed and a request sequence give the same answers.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import math
from dataclasses import dataclass
from typing import Any

from monitor.sim import anthropic_wire as wire
from monitor.sim import canary, faults, responses
from monitor.sim.responses import Action, Event, Reply, Stream
from monitor.sim.scenario import Override, Scenario
from monitor.sim.state import Budget, State, Ticket, answer_delay

PATH = "/v1/messages"
_NO_OVERRIDE = Override()
_HUGE = (" " + "simulated" * 7282,) * 128  # about 8 MiB of text, as api.py's huge_body
# Fields the Messages API accepts; any other is refused ("Extra inputs are not permitted").
_FIELDS = frozenset({
    "model", "messages", "max_tokens", "system", "stream", "temperature", "top_p", "top_k",
    "stop_sequences", "metadata", "tools", "tool_choice", "thinking", "service_tier",
})


@dataclass(frozen=True)
class Request:
    model: str
    messages: list[dict[str, Any]]  # with the system prompt first, as canary.py reads them
    max_tokens: int
    stream: bool
    tool: str | None  # the tool that tool_choice forces, if any


class _Refused(Exception):
    def __init__(self, status: int, message: str, outcome: str) -> None:
        super().__init__(message)
        self.status, self.message, self.outcome = status, message, outcome


def handle(state: State, body: bytes, api_key: str | None, version: str | None) -> Action:
    """Answer one POST /v1/messages and count it in the stats; `api_key` is the x-api-key
    header's value or the bearer token."""
    ticket = state.begin()
    request_id = wire.new_id(ticket.rng, "req")
    model: str | None = None
    try:
        _authorize(api_key, ticket.scenario.api_keys)
        if not version:
            raise _Refused(400, "anthropic-version: header is required", "invalid_request")
        request = _parse(body)
        model = request.model
        action, outcome = _complete(state, ticket, request_id, request)
    except _Refused as refused:
        action, outcome = _reply(ticket, request_id, refused.status,
                                 wire.error(refused.status, refused.message, request_id)), (
            refused.outcome)
    state.record(PATH, model, outcome)
    return action


def _authorize(given: str | None, keys: tuple[str, ...]) -> None:
    """`x-api-key`, or a bearer token (what the SDK's 2.x releases send, and the API takes)."""
    if not keys:
        return
    if given is None:
        raise _Refused(401, "x-api-key header is required", "unauthorized")
    if not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        raise _Refused(401, "invalid x-api-key", "unauthorized")


def _parse(body: bytes) -> Request:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise _Refused(400, "Request body must be a JSON object", "invalid_request")
    extra = sorted(set(data) - _FIELDS)
    if extra:
        raise _Refused(400, f"{extra[0]}: Extra inputs are not permitted", "invalid_request")
    for name in ("model", "messages", "max_tokens"):
        if name not in data:
            raise _Refused(400, f"{name}: Field required", "invalid_request")
    model, messages, max_tokens = data["model"], data["messages"], data["max_tokens"]
    if not isinstance(model, str):
        raise _Refused(400, "model: Input should be a valid string", "invalid_request")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _Refused(400, "max_tokens: Input should be greater than or equal to 1",
                       "invalid_request")
    if not isinstance(messages, list) or not messages:
        raise _Refused(400, "messages: at least one message is required", "invalid_request")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _Refused(400, f"messages.{index}.role: Input should be 'user' or 'assistant'",
                           "invalid_request")
    temperature = data.get("temperature", 1.0)
    if not isinstance(temperature, int | float) or not 0 <= temperature <= 1:
        raise _Refused(400, "temperature: Input should be less than or equal to 1",
                       "invalid_request")
    system = data.get("system")
    prompt = ([{"role": "system", "content": system}] if system else []) + messages
    return Request(model, prompt, max_tokens, data.get("stream") is True, _forced_tool(data))


def _forced_tool(data: dict[str, Any]) -> str | None:
    tools = [t.get("name") for t in data.get("tools") or () if isinstance(t, dict)]
    choice = data.get("tool_choice")
    if not tools or not isinstance(choice, dict):
        return None
    if choice.get("type") == "tool" and choice.get("name") in tools:
        return str(choice["name"])
    return str(tools[0]) if choice.get("type") == "any" else None


def _complete(state: State, ticket: Ticket, request_id: str,
              request: Request) -> tuple[Action, str]:
    scenario = ticket.scenario
    model_fault = faults.for_model(request.model)
    if model_fault is None and not _known(scenario, request.model):
        raise _Refused(404, f"model: {request.model}", "model_not_found")
    override = state.take_override(request.model) or _NO_OVERRIDE
    message, fault, jitter_ms = _draft(ticket, request, override, model_fault)
    outcome = fault or "ok"
    instead = _instead(state, ticket, request_id, fault)
    if instead is not None:
        return instead, outcome
    budget = state.charge(message.input_tokens + message.output_tokens, ticket.now)
    if budget.exceeded:
        return _rate_limited(ticket, request_id, budget), faults.RATE_LIMITED

    latency = scenario.latency
    delay_ms, factor = answer_delay(ticket, request.stream, jitter_ms, override, fault)
    content_type = "text/plain; charset=utf-8" if fault == faults.WRONG_CONTENT_TYPE else None
    truncated = fault in (faults.TRUNCATED_BODY, faults.TRUNCATED_STREAM)
    if request.stream:
        head = wire.headers(ticket.now, content_type or wire.EVENT_STREAM, request_id,
                            budget=budget)
        events = wire.events(message, delay_ms / 1000, latency.per_token_ms * factor / 1000)
        if fault == faults.INVALID_JSON:
            index = next(i for i, event in enumerate(events) if event.content)
            events[index] = Event(events[index].data[: len(events[index].data) // 2] + b"\n\n",
                                  events[index].delay_s, True)
        if truncated:
            content = [i for i, event in enumerate(events) if event.content]
            events = events[: content[len(content) // 2]]
        return Stream(responses.stream_head(head), events, cut=truncated), outcome
    data = wire.body(message)
    if fault == faults.INVALID_JSON:
        data = data[: len(data) // 2]
    headers = wire.headers(ticket.now, content_type or wire.JSON, request_id, budget=budget)
    reply = responses.message(200, headers, data[: len(data) // 2] if truncated else data,
                              declared_length=len(data) if truncated else None)
    return Reply(reply, delay_ms / 1000, close=truncated), outcome


def _draft(ticket: Ticket, request: Request, override: Override,
           model_fault: str | None) -> tuple[wire.Message, str | None, float]:
    scenario, rng = ticket.scenario, ticket.rng
    # Drawn unconditionally and in this order: whether a value is used must not shift the others.
    message_id = wire.new_id(rng, "msg")
    tool_id = wire.new_id(rng, "toolu")
    jitter_ms = rng.uniform(-scenario.latency.jitter_ms, scenario.latency.jitter_ms)
    roll, random_kind = rng.random(), rng.choice(scenario.faults.kinds)
    fault = model_fault or override.fault or (random_kind if roll < scenario.faults.rate else None)
    snapshot = override.snapshot or scenario.aliases.get(request.model, request.model)
    variant = scenario.output_variant if override.output_variant is None else (
        override.output_variant)
    text = override.content
    if text is None:  # a scenario's answer for this prompt, as the OpenAI endpoint gives it
        text = scenario.answers.get(canary.last_prompt(request.messages) or "")
    if text is None:  # Anthropic has no seed: the same prompt is answered the same
        text = canary.answer(request.messages, snapshot, variant, "greedy")
    pieces = tuple(canary.pieces(text))
    if fault == faults.HUGE_BODY:
        pieces = _HUGE
    stop_reason = "end_turn"
    if len(pieces) > request.max_tokens:
        pieces, stop_reason = pieces[: request.max_tokens], "max_tokens"
    block = wire.Block(pieces)
    if request.tool is not None:
        arguments = json.dumps({"answer": text}, ensure_ascii=False)
        block, stop_reason = wire.Block(tool=request.tool, tool_id=tool_id,
                                        tool_input=arguments), "tool_use"
    hidden = scenario.hidden_system_prompt_tokens if override.hidden_system_prompt_tokens is None \
        else override.hidden_system_prompt_tokens
    message = wire.Message(
        message_id=message_id, model=snapshot, blocks=(block,), stop_reason=stop_reason,
        input_tokens=canary.prompt_tokens(request.messages) + hidden,
        # OpenAI's "default" tier is Anthropic's "standard".
        service_tier="standard" if scenario.service_tier == "default" else scenario.service_tier,
        omit_content=fault == faults.MISSING_FIELDS)
    return message, fault, jitter_ms


def _instead(state: State, ticket: Ticket, request_id: str, fault: str | None) -> Action | None:
    """What a fault sends in place of a Message; None when a Message is sent."""
    status = faults.http_status(fault) if fault else None
    if status is not None:
        return _reply(ticket, request_id, status, wire.error(status, None, request_id))
    if fault == faults.HTML_ERROR:
        return _reply(ticket, request_id, 502, responses.HTML_502, "text/html")
    if fault == faults.HANG:
        return responses.Hang(ticket.scenario.faults.hang_s)
    if fault == faults.RESET:
        return responses.Reset()
    if fault == faults.RATE_LIMITED:
        budget = dataclasses.replace(state.budget(ticket.now), remaining_requests=0,
                                     exceeded="requests")
        return _rate_limited(ticket, request_id, budget)
    return None


def _rate_limited(ticket: Ticket, request_id: str, budget: Budget) -> Reply:
    if budget.exceeded == "requests":
        what, limit = "requests", budget.limit_requests
    else:
        what, limit = "input tokens", budget.limit_tokens
    message = (f"This request would exceed the rate limit for your organization "
               f"({wire.ORGANIZATION_ID}) of {limit} {what} per minute. For details, refer to: "
               "https://docs.claude.com/en/api/rate-limits.")
    return _reply(ticket, request_id, 429, wire.error(429, message, request_id), budget=budget,
                  retry_after_s=max(1, math.ceil(budget.reset_s)))


def _reply(ticket: Ticket, request_id: str, status: int, body: bytes,
           content_type: str = wire.JSON, *, budget: Budget | None = None,
           retry_after_s: int | None = None) -> Reply:
    headers = wire.headers(ticket.now, content_type, request_id, budget=budget,
                           retry_after_s=retry_after_s)
    return Reply(responses.message(status, headers, body))


def _known(scenario: Scenario, model: str) -> bool:
    allowed = scenario.models
    return allowed is None or model in allowed or any(
        scenario.aliases.get(name) == model for name in allowed)
