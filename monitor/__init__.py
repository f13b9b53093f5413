"""monitor: watch hosted LLM APIs for drift with canary probes and a full-fidelity history."""

__version__ = "0.1.0"
