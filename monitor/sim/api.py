"""The API a client sees: chat completions (OpenAI and Azure routes) and the model list.

Requests are checked in OpenAI's order: route, key, body, model; then faults and rate limits.
Everything an answer depends on is drawn from the request's own RNG in a fixed order, so the same
scenario, seed and request sequence give the same ids, fingerprints, latencies and content however
threads interleave.
"""

from __future__ import annotations

import dataclasses
import hmac
import math
import re
from dataclasses import dataclass

from monitor.sim import canary, faults, responses
from monitor.sim.request import ChatRequest, InvalidRequest, parse_request
from monitor.sim.responses import JSON, Action, Answer, Choice, Event, Reply, Stream
from monitor.sim.scenario import Override, Scenario
from monitor.sim.state import Budget, State, Ticket, answer_delay

_CHAT_PATH = "/v1/chat/completions"
_MODELS_PATH = "/v1/models"
_AZURE_CHAT = re.compile(r"/openai/deployments/([^/]+)/chat/completions")
_NO_OVERRIDE = Override()
# The huge_body fault: 128 tokens of 64 KiB each, about 8 MiB of valid JSON, whatever the cap.
_HUGE = tuple([" " + "simulated" * 7282] * 128)
_SERVER_ERRORS = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
}
_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)
# OpenAI quotes part of a wrong key back; the simulator never does, so no log or store gets it.
_WRONG_KEY = (
    "Incorrect API key provided. You can find your API key at "
    "https://platform.openai.com/account/api-keys."
)
_AZURE_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
    "valid key for an active subscription and use a correct regional API endpoint for your "
    "resource."
)
_AZURE_NO_DEPLOYMENT = (
    "The API deployment for this resource does not exist. If you created the deployment within the "
    "last 5 minutes, please wait a moment and try again."
)


@dataclass(frozen=True)
class Call:
    """One API request as received."""

    method: str
    path: str
    api_version: str | None  # the `api-version` query parameter
    authorization: str | None
    api_key: str | None  # Azure's key header
    body: bytes


@dataclass(frozen=True)
class _Route:
    ticket: Ticket
    deployment: str | None  # set on the Azure route

    @property
    def azure(self) -> bool:
        return self.deployment is not None

    def reply(self, status: int, body: bytes, content_type: str = JSON, *,
              budget: Budget | None = None, retry_after_s: int | None = None,
              processing_ms: int | None = None, delay_s: float = 0.0,
              declared_length: int | None = None) -> Reply:
        headers = self.headers(content_type, budget=budget, retry_after_s=retry_after_s,
                               processing_ms=processing_ms)
        data = responses.message(status, headers, body, declared_length=declared_length)
        return Reply(data, delay_s, close=declared_length is not None)

    def headers(self, content_type: str, *, budget: Budget | None = None,
                retry_after_s: int | None = None,
                processing_ms: int | None = None) -> list[tuple[str, str]]:
        ticket = self.ticket
        if self.deployment is not None:
            return responses.azure_headers(ticket.rng, ticket.now, content_type, self.deployment,
                                           budget=budget, retry_after_s=retry_after_s)
        return responses.openai_headers(ticket.rng, ticket.now, content_type, budget=budget,
                                        retry_after_s=retry_after_s, processing_ms=processing_ms)


class _Refused(Exception):
    """An error answer decided before a completion exists."""

    def __init__(self, reply: Reply, outcome: str) -> None:
        super().__init__(outcome)
        self.reply = reply
        self.outcome = outcome


def handle(state: State, call: Call) -> Action:
    """Answer one request to the API and count it in the stats."""
    ticket = state.begin()
    azure = _AZURE_CHAT.fullmatch(call.path)
    route = _Route(ticket, azure[1] if azure else None)
    model: str | None = None
    action: Action
    try:
        _authorize(route, call, ticket.scenario.api_keys)
        if call.method == "GET" and call.path == _MODELS_PATH:
            action, outcome = route.reply(200, responses.models(_model_names(ticket.scenario))), "ok"
        elif call.method == "POST" and (azure or call.path == _CHAT_PATH):
            if azure and not call.api_version:
                raise _Refused(route.reply(404, responses.azure_error("404", "Resource not found")),
                               "not_found")
            request = parse_request(call.body, route.deployment)
            model = request.model
            action, outcome = _complete(state, route, request)
        else:
            body = responses.openai_error(f"Invalid URL ({call.method} {call.path})",
                                          "invalid_request_error")
            action, outcome = route.reply(404, body), "not_found"
    except InvalidRequest as invalid:
        body = responses.openai_error(invalid.message, "invalid_request_error", invalid.param,
                                      invalid.code)
        action, outcome = route.reply(400, body), "invalid_request"
    except _Refused as refused:
        action, outcome = refused.reply, refused.outcome
    state.record(call.path, model, outcome)
    return action


def _authorize(route: _Route, call: Call, keys: tuple[str, ...]) -> None:
    if not keys:
        return
    given = bearer(call.authorization)
    if route.azure and call.api_key is not None:
        given = call.api_key
    # Compared as bytes in constant time, as a real key check would be.
    if given is not None and any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
        return
    if route.azure:
        body = responses.azure_error("401", _AZURE_DENIED)
    else:
        message = _NO_KEY if given is None else _WRONG_KEY
        body = responses.openai_error(message, "invalid_request_error", None, "invalid_api_key")
    raise _Refused(route.reply(401, body), "unauthorized")


def bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _model_names(scenario: Scenario) -> list[str]:
    if scenario.models is not None:
        return list(scenario.models)
    return sorted(set(scenario.aliases) | set(scenario.aliases.values()))


def _complete(state: State, route: _Route, request: ChatRequest) -> tuple[Action, str]:
    ticket, scenario = route.ticket, route.ticket.scenario
    model_fault = faults.for_model(request.model)
    if model_fault is None and not _known(scenario, request.model):
        if route.azure:
            body = responses.azure_error("DeploymentNotFound", _AZURE_NO_DEPLOYMENT)
        else:
            body = responses.openai_error(
                f"The model `{request.model}` does not exist or you do not have access to it.",
                "invalid_request_error", None, "model_not_found")
        raise _Refused(route.reply(404, body), "model_not_found")

    override = state.take_override(request.model) or _NO_OVERRIDE
    answer, fault, jitter_ms = _draft(route, request, override, model_fault)
    outcome = fault or "ok"
    refusal = _instead_of_completion(state, route, fault, request.model)
    if refusal is not None:
        return refusal, outcome
    budget = state.charge(answer.prompt_tokens + answer.completion_tokens, ticket.now)
    if budget.exceeded:
        return _rate_limited(route, budget, request.model), faults.RATE_LIMITED

    latency = scenario.latency
    delay_ms, factor = answer_delay(ticket, request.stream, jitter_ms, override, fault)
    content_type = "text/plain; charset=utf-8" if fault == faults.WRONG_CONTENT_TYPE else None
    truncated = fault in (faults.TRUNCATED_BODY, faults.TRUNCATED_STREAM)

    if request.stream:
        # Headers go out at once; the delay is spent before the first chunk, as time to first token.
        headers = route.headers(content_type or responses.EVENT_STREAM, budget=budget,
                                processing_ms=0)
        events = responses.stream_events(answer, delay_ms / 1000,
                                         latency.per_token_ms * factor / 1000)
        if fault == faults.INVALID_JSON:
            _corrupt(events)
        if truncated:
            events = _cut(events)
        return Stream(responses.stream_head(headers), events, cut=truncated), outcome

    body = responses.completion(answer)
    if fault == faults.INVALID_JSON:
        body = body[: len(body) // 2]
    return route.reply(
        200, body[: len(body) // 2] if truncated else body, content_type or JSON, budget=budget,
        processing_ms=round(delay_ms), delay_s=delay_ms / 1000,
        declared_length=len(body) if truncated else None,
    ), outcome


def _draft(route: _Route, request: ChatRequest, override: Override,
           model_fault: str | None) -> tuple[Answer, str | None, float]:
    """The answer, the fault to deliver it with (if any) and the latency jitter."""
    ticket, scenario, rng = route.ticket, route.ticket.scenario, route.ticket.rng
    # Drawn unconditionally and in this order: whether a value is used must not shift the others.
    completion_id = responses.completion_id(rng)
    fingerprint = _fingerprint(scenario, ticket)
    jitter_ms = rng.uniform(-scenario.latency.jitter_ms, scenario.latency.jitter_ms)
    roll, random_kind = rng.random(), rng.choice(scenario.faults.kinds)
    sample = rng.getrandbits(64)

    random_fault = random_kind if roll < scenario.faults.rate else None
    fault = model_fault or override.fault or random_fault
    if override.system_fingerprint is not None:
        fingerprint = override.system_fingerprint.value
    snapshot = override.snapshot or scenario.aliases.get(request.model, request.model)
    variant = _first(override.output_variant, scenario.output_variant)
    hidden_tokens = _first(override.hidden_system_prompt_tokens,
                           scenario.hidden_system_prompt_tokens)
    content = override.content
    if content is None:
        content = scenario.answers.get(canary.last_prompt(request.messages) or "")
    choices = _choices(request, snapshot, variant, sample, content)
    if fault == faults.HUGE_BODY:
        choices = tuple(Choice(_HUGE, "stop") for _ in choices)
    answer = Answer(
        azure=route.azure,
        completion_id=completion_id,
        created=int(ticket.now),
        model=snapshot,
        system_fingerprint=fingerprint,
        service_tier=scenario.service_tier,
        choices=choices,
        prompt_tokens=canary.prompt_tokens(request.messages) + hidden_tokens,
        include_usage=request.include_usage,
        omit_choices=fault == faults.MISSING_FIELDS,
    )
    return answer, fault, jitter_ms


def _instead_of_completion(state: State, route: _Route, fault: str | None,
                           model: str) -> Action | None:
    """What a fault sends in place of a completion; None when a completion is sent."""
    status = faults.http_status(fault) if fault else None
    if status is not None:
        message = _SERVER_ERRORS.get(status, f"{responses.phrase(status)}.")
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return route.reply(status, responses.openai_error(message, kind))
    if fault == faults.HTML_ERROR:
        return route.reply(502, responses.HTML_502, "text/html")
    if fault == faults.HANG:
        return responses.Hang(route.ticket.scenario.faults.hang_s)
    if fault == faults.RESET:
        return responses.Reset()
    if fault == faults.RATE_LIMITED:
        budget = dataclasses.replace(state.budget(route.ticket.now), remaining_requests=0,
                                     exceeded="requests")
        return _rate_limited(route, budget, model)
    return None


def _known(scenario: Scenario, model: str) -> bool:
    allowed = scenario.models
    if allowed is None or model in allowed:
        return True
    # A snapshot name is as good as the allowed alias that points at it.
    return any(scenario.aliases.get(name) == model for name in allowed)


def _fingerprint(scenario: Scenario, ticket: Ticket) -> str | None:
    pool = scenario.fingerprints
    if not pool:
        return None
    step = scenario.fingerprint_rotation.step(ticket.number, ticket.elapsed_s) % len(pool)
    weights = [fingerprint.weight for fingerprint in pool]
    weights = weights[-step:] + weights[:-step] if step else weights
    return ticket.rng.choices([fingerprint.value for fingerprint in pool], weights)[0]


def _choices(request: ChatRequest, snapshot: str, variant: int, sample: int,
             content: str | None) -> tuple[Choice, ...]:
    sampling = request.temperature > 0
    if request.seed is not None:
        key = f"seed {request.seed}"
    else:  # sampling without a seed: every request may differ, still fixed by the sim's seed
        key = f"draw {sample}" if sampling else "greedy"
    choices = []
    for index in range(request.n):
        if content is None:
            text = canary.answer(request.messages, snapshot, variant,
                                 f"{key} choice {index}" if sampling else key)
        else:
            text = content
        pieces = canary.pieces(text)
        if request.cap is not None and len(pieces) > request.cap:
            choices.append(Choice(tuple(pieces[: request.cap]), "length"))
        else:
            choices.append(Choice(tuple(pieces), "stop"))
    return tuple(choices)


def _rate_limited(route: _Route, budget: Budget, model: str) -> Reply:
    retry_after_s = max(1, math.ceil(budget.reset_s))
    if route.azure:
        kind = "call" if budget.exceeded == "requests" else "token"
        body = responses.azure_error("429", (
            "Requests to the ChatCompletions_Create Operation under Azure OpenAI API have exceeded "
            f"{kind} rate limit of your current OpenAI S0 pricing tier. Please retry after "
            f"{retry_after_s} seconds. Please go here: https://aka.ms/oai/quotaincrease if you "
            "would like to further increase the default rate limit."))
    else:
        if budget.exceeded == "requests":
            what, limit, left = "requests per min (RPM)", budget.limit_requests, budget.remaining_requests
        else:
            what, limit, left = "tokens per min (TPM)", budget.limit_tokens, budget.remaining_tokens
        body = responses.openai_error(
            f"Rate limit reached for {model} in organization {responses.ORGANIZATION} on {what}: "
            f"Limit {limit}, Used {limit - left}. Please try again in "
            f"{responses.go_duration(budget.reset_s)}. Visit "
            "https://platform.openai.com/account/rate-limits to learn more.",
            budget.exceeded or "requests", None, "rate_limit_exceeded")
    return route.reply(429, body, budget=budget, retry_after_s=retry_after_s)


def _corrupt(events: list[Event]) -> None:
    """Cut the first content event's JSON in half (invalid_json on a stream)."""
    index = next((i for i, event in enumerate(events) if event.content), 0)
    event = events[index]
    events[index] = Event(event.data[: len(event.data) // 2] + b"\n\n", event.delay_s, True)


def _cut(events: list[Event]) -> list[Event]:
    """The events up to half-way through the content: no finish chunk, usage or [DONE]."""
    content = [i for i, event in enumerate(events) if event.content]
    return events[: content[len(content) // 2]] if content else events[:1]


def _first(override: int | None, default: int) -> int:
    return default if override is None else override
