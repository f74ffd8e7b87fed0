"""What each simulated call is, and the callState body it shows at a given moment.

A call's fixed facts (direction, numbers, queue/ring/talk durations, how it ends, its
STIR/SHAKEN result...) are drawn once from a keyed hash of its index. Its *state* is then
a function of the clock: queued until it starts, initiated while ringing, answered while
talking, disconnected after it ends. So only recent calls can still be active, and a call
seen again later has moved on, as on the real service.
"""

from __future__ import annotations

import base64
import math
import statistics
from dataclasses import dataclass
from typing import Any

import orjson

from auditor.simulator.rand import cumulative, derive_key, hex_digest, pick, unit, units, uuid4_like
from auditor.simulator.timefmt import format_ms

RETENTION_MS = 7 * 86_400_000  # kept 7 days after hang-up, then 404 / not listed
QUEUE_MAX_MS = 900_000  # longest time an outbound call waits in the account queue
RING_MAX_MS = 300_000  # callTimeout is at most 300 s
TALK_MAX_MS = 4 * 3_600_000
LIFETIME_MAX_MS = QUEUE_MAX_MS + RING_MAX_MS + TALK_MAX_MS

DOCUMENTED_CAUSES = (
    "hangup", "busy", "timeout", "cancel", "rejected", "callback-error", "invalid-bxml",
    "application-error", "account-limit", "node-capacity-exceeded", "error", "unknown",
)
UNDOCUMENTED_CAUSES = ("media-timeout", "sip-error", "destination-unreachable")
_CAUSES = cumulative((
    ("hangup", 0.81), ("busy", 0.035), ("timeout", 0.035), ("cancel", 0.03),
    ("rejected", 0.02), ("callback-error", 0.01), ("invalid-bxml", 0.008),
    ("application-error", 0.008), ("account-limit", 0.006), ("node-capacity-exceeded", 0.004),
    ("error", 0.014), ("unknown", 0.01), ("~undocumented", 0.01),
))
_NEVER_ANSWERED = frozenset(
    {"busy", "timeout", "cancel", "rejected", "account-limit", "node-capacity-exceeded"}
)
_VERSTAT = cumulative((
    ("TN-Validation-Passed", 0.75), ("TN-Validation-Failed", 0.12),
    ("Tn-Validation-Passed", 0.10), ("", 0.03),  # "" = no verstat key at all
))
_ATTESTATION = cumulative((("A", 0.6), ("B", 0.25), ("C", 0.15)))
_ERROR_MESSAGES = (
    "Call failed due to an internal error",
    "Media server unavailable",
    "SIP 500 Server Internal Error from carrier",
)
_EXTRA_SHAKEN_KEYS = (("verstatReason", "valid-certificate"), ("ppt", "shaken"))
_UNKNOWN_FIELDS: tuple[tuple[str, Any], ...] = (
    ("tag", "campaign-7"), ("sipCallId", None), ("transcriptionAvailable", False),
)
_TALK = statistics.NormalDist(mu=3.8, sigma=1.1)  # ln seconds: median ~45 s, long tail
_PASSPORT_HEADER = base64.urlsafe_b64encode(orjson.dumps({
    "alg": "ES256", "ppt": "shaken", "typ": "passport",
    "x5u": "https://cert.example.net/shaken/cert.pem",
})).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class CallFacts:
    """Everything fixed about one call; times are epoch ms."""

    index: int
    outbound: bool
    created_ms: int
    start_ms: int
    answer_ms: int | None
    end_ms: int
    cause: str
    to: str
    from_: str
    parent_index: int | None
    draws: tuple[int, ...]

    @property
    def expires_ms(self) -> int:
        """First moment the call is past retention."""
        return self.end_ms + RETENTION_MS

    def state_at(self, now_ms: int) -> str:
        if now_ms < self.start_ms:
            return "queued"
        if now_ms < (self.answer_ms if self.answer_ms is not None else self.end_ms):
            return "initiated"
        if now_ms < self.end_ms:
            return "answered"
        return "disconnected"

    def cause_at(self, now_ms: int) -> str | None:
        return self.cause if now_ms >= self.end_ms else None

    def next_change_ms(self, now_ms: int) -> int:
        """When the body shown at *now_ms* next changes (state change or expiry)."""
        for t in (self.start_ms, self.answer_ms, self.end_ms, self.expires_ms):
            if t is not None and t > now_ms:
                return t
        return self.expires_ms


class CallMaker:
    """Derives :class:`CallFacts` and callState bodies for one seed and account."""

    __slots__ = ("_account", "_apps", "_body_key", "_facts_key", "_own_numbers")

    def __init__(self, seed: int, account_id: str) -> None:
        self._account = account_id
        self._facts_key = derive_key(seed, "call-facts")
        self._body_key = derive_key(seed, "call-body")
        account_key = derive_key(seed, "account")
        self._apps = tuple(uuid4_like(account_key, b"app%d" % k) for k in range(3))
        self._own_numbers = tuple(
            _phone(*(int(hex_digest(account_key, b"tn%d.%d" % (k, j), 2), 16) for j in range(3)))
            for k in range(12)
        )

    def facts(self, index: int, created_ms: int) -> CallFacts:
        d = units(self._facts_key, index.to_bytes(8, "big"))
        outbound = d[0] < 32768
        if outbound:
            # Most calls leave the queue at once; an account over its call-creation rate
            # queues some for minutes, which is how a visible call can still be "queued".
            queue_s = 60.0 + unit(d[3]) * 840.0 if d[2] < 3932 else 0.05 + unit(d[3]) * 1.95
        else:
            queue_s = 0.0
        start_ms = created_ms + round(queue_s * 1000)
        cause = pick(d[6], _CAUSES)
        if cause == "~undocumented":
            cause = UNDOCUMENTED_CAUSES[d[22] % len(UNDOCUMENTED_CAUSES)]
        long_ring = d[4] < 5243  # 8%: rings up to callTimeout's 300 s maximum
        ring_s = 30.0 + unit(d[5]) * 270.0 if long_ring else 1.0 + unit(d[5]) * 19.0
        if cause == "timeout":
            ring_s = max(ring_s, 30.0)
        elif cause in ("account-limit", "node-capacity-exceeded"):
            ring_s = unit(d[5]) * 0.5
        answered = cause not in _NEVER_ANSWERED and (cause == "hangup" or d[7] < 45875)
        if answered:
            answer_ms = start_ms + round(ring_s * 1000)
            talk_ms = min(round(1000 * math.exp(_TALK.inv_cdf(unit(d[8])))), TALK_MAX_MS)
            end_ms = answer_ms + max(talk_ms, 200)
        else:
            answer_ms = None
            end_ms = start_ms + round(ring_s * 1000)
        own = self._own_numbers[d[9] % len(self._own_numbers)]
        other = _phone(d[10], d[11], d[12])
        if outbound:
            to = f"sip:agent{d[13] % 1000:03d}@pbx.example.com" if d[14] < 2621 else other
            from_ = own
        else:
            to, from_ = own, other
        parent = index - 1 - d[1] % 4 if outbound and d[15] < 6554 and index >= 4 else None
        return CallFacts(index, outbound, created_ms, start_ms, answer_ms, end_ms, cause,
                         to, from_, parent, d)

    def body(self, f: CallFacts, call_id: str, parent_id: str | None,
             now_ms: int) -> dict[str, Any]:
        """The callState JSON object *f* shows at *now_ms* (the call must be visible)."""
        d = f.draws
        state = f.state_at(now_ms)
        started = state != "queued"
        ended = state == "disconnected"
        answered = f.answer_ms is not None and now_ms >= f.answer_ms
        shaken: dict[str, str] | None = None
        identity: str | None = None
        if not f.outbound and d[16] >= 5243:  # 8% of inbound calls carry no STIR/SHAKEN
            shaken = self._shaken(f)
            if d[18] < 32768:
                identity = self._identity(f, shaken)
        error = ended and f.cause == "error"
        answer_ms = f.answer_ms if answered else None
        if ended:
            last = f.end_ms
        elif answer_ms is not None:
            last = answer_ms
        else:
            last = f.start_ms if started else f.created_ms
        body: dict[str, Any] = {
            "applicationId": self._apps[d[20] % len(self._apps)],
            "accountId": self._account,
            "callId": call_id,
            "parentCallId": parent_id,
            "to": f.to,
            "from": f.from_,
            "direction": "outbound" if f.outbound else "inbound",
            "state": state,
            "stirShaken": shaken,
            "identity": identity,
            "enqueuedTime": format_ms(f.created_ms) if f.outbound else None,
            "startTime": format_ms(f.start_ms) if started else None,
            "answerTime": format_ms(answer_ms) if answer_ms is not None else None,
            "endTime": format_ms(f.end_ms) if ended else None,
            "disconnectCause": f.cause if ended else None,
            "errorMessage": _ERROR_MESSAGES[d[21] % len(_ERROR_MESSAGES)] if error else None,
            "errorId": uuid4_like(self._body_key, b"err%d" % f.index) if error else None,
            "lastUpdate": format_ms(last),
        }
        if d[19] < 1966:  # 3%: a top-level field the spec does not know (yet)
            name, value = _UNKNOWN_FIELDS[d[23] % len(_UNKNOWN_FIELDS)]
            body[name] = value if value is not None else f"{d[24]:04x}@sip.example.net"
        if d[25] < 1311:  # 2%: null fields left out entirely ("no field is required")
            body = {k: v for k, v in body.items() if v is not None}
        return body

    def _shaken(self, f: CallFacts) -> dict[str, str]:
        d = f.draws
        shaken: dict[str, str] = {}
        verstat = pick(d[26], _VERSTAT)
        if verstat:
            shaken["verstat"] = verstat
        shaken["attestationIndicator"] = pick(d[27], _ATTESTATION)
        if d[28] < 58982:
            shaken["originatingId"] = uuid4_like(self._body_key, b"orig%d" % f.index)
        if d[29] < 3277:  # 5%: the object is free-form
            key, value = _EXTRA_SHAKEN_KEYS[d[30] % len(_EXTRA_SHAKEN_KEYS)]
            shaken[key] = value
        return shaken

    def _identity(self, f: CallFacts, shaken: dict[str, str]) -> str:
        """A PASSporT-shaped SIP Identity header (structure only: the signature is noise)."""
        claims = {
            "attest": shaken.get("attestationIndicator", "C"),
            "dest": {"tn": [f.to.lstrip("+")]},
            "iat": f.created_ms // 1000,
            "orig": {"tn": f.from_.lstrip("+")},
            "origid": shaken.get("originatingId", ""),
        }
        payload = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
        sig = base64.urlsafe_b64encode(
            bytes.fromhex(hex_digest(self._body_key, b"sig%d" % f.index, 64))
        ).rstrip(b"=").decode()
        return (f"{_PASSPORT_HEADER}.{payload}.{sig};info=<https://cert.example.net/shaken/"
                "cert.pem>;alg=ES256;ppt=shaken")


def _phone(a: int, b: int, c: int) -> str:
    """A plausible North American E.164 number from three 16-bit draws."""
    npa = 201 + a % 789
    if npa % 100 == 11:  # N11 codes are not area codes
        npa += 1
    nxx = 201 + b % 789
    return f"+1{npa}{nxx}{c % 10000:04d}"
