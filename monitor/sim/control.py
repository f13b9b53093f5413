"""The control endpoint under /_sim/, for tests and demos that change the simulator while it runs.

    GET  /_sim/scenario   the current scenario (api_keys masked)
    POST /_sim/scenario   merge a partial scenario in (tables by key; lists and values replace)
    POST /_sim/enqueue    queue one override, or a list of them, for the next requests (FIFO)
    POST /_sim/reset      back to the starting scenario; counters, budgets and queue cleared
    GET  /_sim/stats      request counts by path, model and outcome; requests in flight

An invalid change is answered 400 with the SimulatorError message and changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from monitor.errors import SimulatorError
from monitor.sim import responses
from monitor.sim.responses import JSON, Reply
from monitor.sim.scenario import Override, Scenario
from monitor.sim.state import State


def handle(state: State, method: str, path: str, body: bytes) -> Reply:
    route = (method, path.removeprefix("/_sim/"))
    try:
        if route == ("GET", "scenario"):
            return _json(200, view(state.scenario))
        if route == ("POST", "scenario"):
            return _json(200, view(state.update(_load(body, path), f"POST {path}")))
        if route == ("POST", "enqueue"):
            data = _load(body, path)
            items = data if isinstance(data, list) else [data]
            return _json(200, {"queued": state.enqueue(overrides(items, f"POST {path}"))})
        if route == ("POST", "reset"):
            state.reset()
            return _json(200, {"reset": True})
        if route == ("GET", "stats"):
            return _json(200, state.stats())
    except SimulatorError as error:
        return _json(400, {"error": {"message": str(error), "type": "invalid_request_error"}})
    return _json(404, {"error": {"message": f"no control endpoint {method} {path}",
                                 "type": "invalid_request_error"}})


def view(scenario: Scenario) -> dict[str, Any]:
    """The scenario as the control endpoint shows it: keys are never sent back, only counted."""
    shown = scenario.to_dict()
    shown["api_keys"] = ["****"] * len(scenario.api_keys)
    return shown


def overrides(items: Sequence[object], source: str) -> list[Override]:
    return [Override.from_dict(item, f"{source} [{index}]") for index, item in enumerate(items)]


def _load(body: bytes, path: str) -> Any:
    try:
        return json.loads(body or b"{}")
    except ValueError:
        raise SimulatorError(f"POST {path}: expected a JSON body") from None


def _json(status: int, payload: object) -> Reply:
    body = json.dumps(payload).encode()
    return Reply(responses.message(status, [("content-type", JSON)], body))
