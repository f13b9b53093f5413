"""`monitor report --format csv`: one row per target, scalar fields flattened (docs/report.md).

Spreadsheets run a cell starting with = + - or @ as a formula, and a fingerprint or model name
is whatever the server sent: such text cells get a leading ' so they stay text.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from monitor.render.fields import PHASES, QUANTILES

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # tab and CR: Excel strips them, then runs =
_LIMITS = ("limit_requests", "limit_tokens", "remaining_requests", "remaining_tokens",
           "headroom_requests", "headroom_tokens")

Cell = str | int | float | None


def render_csv(doc: dict[str, Any]) -> str:
    """The report document as CSV with a header row; null values are empty cells."""
    error_kinds = sorted({kind for t in doc["targets"] for kind in t["errors"]})
    skip_kinds = sorted({kind for t in doc["targets"] for kind in t["skipped"]})
    header = (["target", "probes", "ok", "success_rate"]
              + [f"errors_{kind}" for kind in error_kinds]
              + [f"skipped_{kind}" for kind in skip_kinds]
              + [f"{phase}_{q}_ms" for phase in PHASES for q in QUANTILES]
              + [f"tokens_per_s_{q}" for q in QUANTILES]
              + ["prompt_tokens", "completion_tokens", "total_tokens", "fingerprints", "models"]
              + list(_LIMITS) + ["rate_limits_at", "open_alerts", "last_error_at",
                                 "last_error_kind"])
    out = io.StringIO()
    # RFC 4180's CRLF; the writer then also quotes a lone CR inside a cell, which "\n" would not.
    writer = csv.writer(out)
    writer.writerow([_guard(name) for name in header])
    for t in doc["targets"]:
        writer.writerow([_guard(cell) for cell in _row(t, error_kinds, skip_kinds)])
    return out.getvalue()


def _row(t: dict[str, Any], error_kinds: list[str], skip_kinds: list[str]) -> list[Cell]:
    latency = t["latency_ms"]
    speed = t["output_tokens_per_s"] or {}
    limits = t["rate_limits"] or {}  # null when no probe carried a rate-limit header
    error = t["last_error"] or {}
    return ([t["target"], t["probes"], t["ok"], t["success_rate"]]
            + [t["errors"].get(kind, 0) for kind in error_kinds]
            + [t["skipped"].get(kind, 0) for kind in skip_kinds]
            + [(latency.get(phase) or {}).get(q) for phase in PHASES for q in QUANTILES]
            + [speed.get(q) for q in QUANTILES]
            + [t["tokens"]["prompt"], t["tokens"]["completion"], t["tokens"]["total"],
               _shares(t["fingerprints"], "fingerprint"), _shares(t["models"], "model")]
            + [limits.get(key) for key in _LIMITS]
            + [limits.get("at"), len(t["open_alerts"]), error.get("at"), error.get("error_kind")])


def _shares(entries: list[dict[str, Any]], key: str) -> str:
    return ";".join(f"{e[key]}:{e['share']}" for e in entries)


def _guard(cell: Cell) -> Cell:
    if isinstance(cell, str) and cell.startswith(_FORMULA_START):
        return "'" + cell
    return cell
