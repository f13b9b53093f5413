"""SimClient: drive a running simulator through its control endpoint, from another process too."""

from __future__ import annotations

from typing import Any

import requests

from monitor.errors import SimulatorError


class SimClient:
    """The same operations as Simulator.scenario/update/enqueue/reset/stats, over HTTP."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        # Accept the API base URL too: f"{sim.url}/v1" is what clients are usually given.
        self.url = url.rstrip("/").removesuffix("/v1")
        self.timeout_s = timeout_s

    def scenario(self) -> dict[str, Any]:
        """The current scenario (api_keys masked)."""
        result: dict[str, Any] = self._call("GET", "scenario")
        return result

    def update(self, **changes: Any) -> dict[str, Any]:
        """Merge `changes` into the scenario, e.g. update(latency={"base_ms": 200})."""
        result: dict[str, Any] = self._call("POST", "scenario", changes)
        return result

    def enqueue(self, *overrides: dict[str, Any]) -> int:
        """Queue one-shot overrides for the next requests; returns how many are queued."""
        return int(self._call("POST", "enqueue", list(overrides))["queued"])

    def reset(self) -> None:
        self._call("POST", "reset")

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def _call(self, method: str, name: str, payload: object = None) -> Any:
        with requests.request(method, f"{self.url}/_sim/{name}", json=payload,
                              timeout=self.timeout_s) as response:
            if response.status_code == 400:
                raise SimulatorError(response.json()["error"]["message"])
            response.raise_for_status()
            return response.json()
