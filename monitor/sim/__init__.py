"""An OpenAI-compatible simulator: the demo's default upstream and the test double for probes.

It serves POST /v1/chat/completions (plain and SSE), GET /v1/models and Azure's
POST /openai/deployments/{deployment}/chat/completions?api-version=..., with OpenAI's body, chunk,
header and error shapes. What it answers is a Scenario (TOML file, or changed at run time through
/_sim/); faults are injected statelessly by model name (`sim-503`, `sim-hang`, ...), one-shot by
enqueue, or at random. Under a seed, the same scenario and request sequence give the same ids,
fingerprints, latencies and content. docs/simulator.md describes every knob.
"""

from monitor.sim.client import SimClient
from monitor.sim.scenario import Scenario, load_scenario
from monitor.sim.server import Simulator, serve

__all__ = ["Scenario", "SimClient", "Simulator", "load_scenario", "serve"]
