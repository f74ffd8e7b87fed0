"""What the server saw: counters that tests assert on, live and as JSON."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(slots=True)
class SimStats:
    """Counters for the API paths (``/api/v2/...``) unless a field says otherwise."""

    requests_by_status: dict[int, int] = field(default_factory=dict)
    throttled: int = 0  # answered 429
    max_window_requests: int = 0  # most admitted (non-429) requests in any sliding second
    max_in_flight: int = 0
    served_by_id: Counter[str] = field(default_factory=Counter)  # GETs per raw path id
    tokens_issued: int = 0  # token endpoint
    list_requests: int = 0
    total_requests: int = 0  # every API request, including dropped connections
    in_flight: int = 0
    token_requests: int = 0  # token endpoint, any outcome
    resets: int = 0  # connections dropped on purpose
    truncated: int = 0  # 200s with a cut-off body
    slow: int = 0  # requests stalled for slow_seconds

    def count_status(self, status: int) -> None:
        self.requests_by_status[status] = self.requests_by_status.get(status, 0) + 1

    def clear(self) -> None:
        """Zero every counter in place, so references held by tests stay live."""
        in_flight = self.in_flight
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                value.clear()
            else:
                setattr(self, f.name, 0)
        # Requests still running will decrement on their way out.
        self.in_flight = in_flight

    def as_dict(self, *, include_ids: bool = True) -> dict[str, Any]:
        """JSON-ready copy (status codes become string keys)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["requests_by_status"] = {str(k): v for k, v in sorted(self.requests_by_status.items())}
        out["served_by_id"] = dict(self.served_by_id) if include_ids else {}
        out["distinct_ids_served"] = len(self.served_by_id)
        return out
