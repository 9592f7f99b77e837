"""A hybrid router (notebook 08): send each request to the local model or the cloud, by rules, and say why.

The rules (`route`) apply in order, the first match wins: privacy (personal data or a confidential flag
stays local; `detect_pii` finds e-mail addresses, phone numbers, card numbers (Luhn-checked), IBANs
(mod-97-checked) and US social security numbers), modality, volume, task and complexity.
`HybridRouter` sends each `UserRequest` to an OpenAI-compatible `Endpoint`, records latency, tokens and
cost (labkit.cost's `api_cost`), and falls back to the local endpoint, saying so, when the cloud is
down or answers garbage.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .check import validator
from .cost import api_cost
from .errors import LabkitError, MissingPackageError, require_positive, unknown
from .runtimes import openai_client

# openai and tqdm are imported inside the functions that use them: `import labkit` stays quick and works
# without the optional extras.

# ----------------------------------------------------------------------------- personal data


@dataclass(frozen=True)
class PiiMatch:
    kind: str  # "email", "phone", "card", "iban", "us_ssn"
    text: str
    start: int
    end: int


PII_LABELS = {"email": "an e-mail address", "phone": "a phone number", "card": "a payment card number",
              "iban": "a bank account number (IBAN)", "us_ssn": "a US social security number"}

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?![\w-])")


def luhn_valid(number: str) -> bool:
    """The Luhn checksum that every payment card number carries: from the right, double every second
    digit (minus 9 when the result is above 9); the sum must end in 0. Spaces and dashes are ignored."""
    digits = re.sub(r"[ -]", "", str(number))
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """ISO 13616 check: move the first four characters to the end, letters to numbers (A=10 ... Z=35),
    and the whole number mod 97 must be 1."""
    s = re.sub(r"\s", "", str(text)).upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", s):
        return False
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


def detect_pii(text: str) -> list[PiiMatch]:
    """Personal data in `text`: e-mail addresses, IBANs (checksum-valid only), payment card numbers
    (Luhn-valid only), US social security numbers and phone numbers (10-15 digits), in text order.
    A span claimed by one kind is not reported again as another (a card number is not also a phone)."""
    if not isinstance(text, str):
        raise LabkitError(f"detect_pii reads text (a str), got {type(text).__name__}")
    found: list[PiiMatch] = []

    def free(start: int, end: int) -> bool:
        return all(end <= m.start or start >= m.end for m in found)

    checks: list[tuple[str, re.Pattern, Callable[[str], bool]]] = [
        ("email", _EMAIL, lambda s: True),
        ("iban", _IBAN, iban_valid),
        ("card", _CARD, luhn_valid),
        ("us_ssn", _SSN, lambda s: True),
        ("phone", _PHONE, lambda s: 10 <= sum(c.isdigit() for c in s) <= 15),
    ]
    for kind, pattern, valid in checks:
        for m in pattern.finditer(text):
            if valid(m.group()) and free(m.start(), m.end()):
                found.append(PiiMatch(kind, m.group(), m.start(), m.end()))
    return sorted(found, key=lambda m: m.start)


def redact(text: str) -> str:
    """`text` with every detected item replaced by [KIND] (for logs you may keep)."""
    out = text
    for m in sorted(detect_pii(text), key=lambda m: -m.start):
        out = out[:m.start] + f"[{m.kind.upper()}]" + out[m.end:]
    return out


# ----------------------------------------------------------------------------- the router

TASKS = ("chat", "classification", "extraction", "summarization", "translation", "code", "reasoning")
BULK_TASKS = ("classification", "extraction", "summarization")  # simple, repetitive, high volume
LEVELS = ("low", "medium", "high")
VOLUMES = ("normal", "high")


@dataclass(frozen=True)
class UserRequest:
    """One request to route. `confidential` is the sender's own flag (a contract, a health record)."""

    prompt: str
    task: str = "chat"
    complexity: str = "low"
    volume: str = "normal"
    needs_vision: bool = False
    confidential: bool = False
    max_tokens: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise LabkitError("a UserRequest needs a prompt (non-empty text)")
        for key, allowed in (("task", TASKS), ("complexity", LEVELS), ("volume", VOLUMES)):
            if getattr(self, key) not in allowed:
                raise unknown(key, getattr(self, key), allowed)
        require_positive("max_tokens", self.max_tokens)


@dataclass(frozen=True)
class Route:
    target: str  # "local" or "cloud"
    rule: str  # which rule decided: privacy, modality, volume, complexity, default
    reason: str

    def __str__(self) -> str:
        return f"{self.target:5} ← {self.rule}: {self.reason}"


RULES = ("privacy", "modality", "volume", "complexity", "default")


def route(request: UserRequest) -> Route:
    """Where a request goes, and why. Rules, first match wins:

    1. privacy    personal data found by `detect_pii`, or flagged confidential -> local (never leaves)
    2. modality   needs image input -> cloud (the local model reads text only)
    3. volume     a high-volume bulk task (classification, extraction, summarization) -> local (cheapest)
    4. complexity high complexity, or a reasoning task -> cloud (the stronger model is worth its price)
    5. default    -> local (cost control)
    """
    if not isinstance(request, UserRequest):
        raise LabkitError(f"route takes a labkit.router.UserRequest, got {type(request).__name__}")
    pii = detect_pii(request.prompt)
    if pii or request.confidential:
        kinds = sorted({PII_LABELS[m.kind] for m in pii})
        what = " and ".join(kinds) if kinds else "the sender marked it confidential"
        extra = " (it needs image input, which the local model cannot read: say so to the user)" \
            if request.needs_vision else ""
        return Route("local", "privacy", f"contains {what}: stays on our hardware{extra}" if kinds
                     else f"{what}: stays on our hardware{extra}")
    if request.needs_vision:
        return Route("cloud", "modality", "needs image input; the local model reads text only")
    if request.volume == "high" and request.task in BULK_TASKS:
        return Route("local", "volume", f"high-volume {request.task}: cheapest per token on our own GPU")
    if request.complexity == "high" or request.task == "reasoning":
        what = "a reasoning task" if request.task == "reasoning" else f"high-complexity {request.task}"
        return Route("cloud", "complexity", f"{what}: worth the stronger (and dearer) model")
    return Route("local", "default", "nothing requires the cloud: local for cost control")


class EndpointError(LabkitError):
    """An endpoint that is down, too slow, or answered something that is not a completion."""


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible endpoint, priced per 1M tokens; `name` says what it is (it appears in every result).

    The course talks to servers on this machine only (`labkit.runtimes.openai_client`); pass
    `allow_remote=True` to reach a real provider's base URL with your key.
    """

    name: str
    base_url: str
    model: str
    api_key: str | None = None
    usd_per_1m_input: float = 0.0
    usd_per_1m_output: float = 0.0
    timeout_s: float = 120.0
    allow_remote: bool = False

    def __post_init__(self) -> None:
        require_positive("usd_per_1m_input", self.usd_per_1m_input, allow_zero=True)
        require_positive("usd_per_1m_output", self.usd_per_1m_output, allow_zero=True)
        require_positive("timeout_s", self.timeout_s)

    def client(self):
        if not self.allow_remote:
            return openai_client(self.base_url, self.api_key, timeout_s=self.timeout_s)
        try:
            from openai import OpenAI
        except ImportError as err:
            raise MissingPackageError("openai", "Talking to an OpenAI-compatible server") from err
        return OpenAI(base_url=self.base_url, api_key=self.api_key or "not-needed", timeout=self.timeout_s,
                      max_retries=0)

    def complete(self, prompt: str, max_tokens: int) -> tuple[str, int, int, float]:
        """(text, prompt tokens, completion tokens, seconds) of one greedy completion; EndpointError when
        the endpoint is down, times out, or answers something that is not a completion with usage."""
        start = time.perf_counter()
        try:
            reply = self.client().completions.create(model=self.model, prompt=prompt, max_tokens=max_tokens,
                                                      temperature=0.0)
        except LabkitError:
            raise
        except Exception as err:  # connection refused, timeout, HTTP error, unparsable body: all mean "down"
            raise EndpointError(f"{self.name} at {self.base_url} failed: {type(err).__name__}: "
                                f"{str(err)[:160]}") from err
        seconds = time.perf_counter() - start
        choices = getattr(reply, "choices", None)
        usage = getattr(reply, "usage", None)
        text = getattr(choices[0], "text", None) if isinstance(choices, list) and choices else None
        p_tok, c_tok = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
        if not isinstance(text, str) or not all(isinstance(n, int) and n >= 0 for n in (p_tok, c_tok)):
            raise EndpointError(f"{self.name} at {self.base_url} answered garbage (no completion text with "
                                f"token usage): {str(reply)[:160]!r}")
        return text, p_tok, c_tok, seconds


@dataclass
class RouteResult:
    request: UserRequest
    decision: Route
    served_by: str  # "local" or "cloud": where the answer actually came from
    endpoint: str
    text: str
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    fell_back: bool = False
    note: str = ""

    def __str__(self) -> str:
        tail = f" | ⚠ {self.note}" if self.note else ""
        return (f"{self.served_by:5} ({self.decision.rule:10}) {self.latency_s * 1000:6.0f} ms "
                f"{self.prompt_tokens:4d}+{self.completion_tokens:<3d} tok ${self.cost_usd:.7f}{tail}")


@dataclass
class HybridRouter:
    """Route each request with `rules` (default `route`) and send it to the local or the cloud endpoint.

    When the cloud endpoint is down or answers garbage, the request is served locally and the result says
    so (`fell_back`, `note`). A request the rules keep local is never sent to the cloud, even when the
    local endpoint fails: that error is raised.
    """

    local: Endpoint
    cloud: Endpoint
    rules: Callable[[UserRequest], Route] = route
    log: list[RouteResult] = field(default_factory=list)

    def send(self, request: UserRequest) -> RouteResult:
        decision = self.rules(request)
        if decision.target not in ("local", "cloud"):
            raise LabkitError(f"a routing rule returned target {decision.target!r}. Accepted: 'local', 'cloud'")
        endpoint, fell_back, note = (self.cloud if decision.target == "cloud" else self.local), False, ""
        try:
            text, p_tok, c_tok, seconds = endpoint.complete(request.prompt, request.max_tokens)
        except EndpointError as err:
            if endpoint is self.local:
                raise
            endpoint, fell_back, note = self.local, True, f"cloud unavailable, served locally instead ({err})"
            text, p_tok, c_tok, seconds = endpoint.complete(request.prompt, request.max_tokens)
        result = RouteResult(request, decision, "cloud" if endpoint is self.cloud else "local", endpoint.name, text,
                             seconds, p_tok, c_tok,
                             api_cost(p_tok, c_tok, endpoint.usd_per_1m_input, endpoint.usd_per_1m_output),
                             fell_back, note)
        self.log.append(result)
        return result

    def run(self, requests: Iterable[UserRequest]) -> list[RouteResult]:
        from tqdm.auto import tqdm

        requests = list(requests)
        return [self.send(r) for r in tqdm(requests, desc="requests")]


def summarize_routes(results: Sequence[RouteResult]) -> list[dict]:
    """Per place served (local, cloud): requests, share, tokens, median latency, total and per-request cost."""
    if not results:
        raise LabkitError("summarize_routes needs at least one RouteResult")
    rows = []
    for where in ("local", "cloud"):
        mine = [r for r in results if r.served_by == where]
        if not mine:
            continue
        rows.append({
            "served by": where, "requests": len(mine), "share": len(mine) / len(results),
            "tokens": sum(r.prompt_tokens + r.completion_tokens for r in mine),
            "median latency (ms)": 1000 * statistics.median(r.latency_s for r in mine),
            "cost ($)": sum(r.cost_usd for r in mine),
            "$ per 1,000 requests": 1000 * sum(r.cost_usd for r in mine) / len(mine),
            "fell back": sum(r.fell_back for r in mine),
        })
    return rows


# ----------------------------------------------------------------------------- exercises


def _luhn_variant(number: str, from_left: bool = False, subtract_nine: bool = True) -> bool:
    """Luhn's check as a learner might slip on it: doubling from the left, or keeping two-digit doubles."""
    digits = [int(c) for c in str(number) if c.isdigit()]
    order = digits if from_left else list(reversed(digits))
    total = 0
    for i, d in enumerate(order):
        if i % 2 == 1:
            d = d * 2 - 9 if subtract_nine and d > 4 else d * 2
        total += d
    return total % 10 == 0


LUHN_SLIPS = {
    "doubling every second digit counted from the LEFT (Luhn counts from the rightmost digit)":
        lambda n: _luhn_variant(n, from_left=True),
    "keeping two-digit doubles as they are (subtract 9 from a double above 9)":
        lambda n: _luhn_variant(n, subtract_nine=False),
}


@validator("08.luhn", hint="Walk the digits from the right-hand end; every second one gets doubled, and a doubled "
                           "digit must go back to a single digit before you add it. What must the total be "
                           "divisible by?")
def _validate_luhn(answer: Any, numbers: Sequence[str] = ()) -> str | None:
    expected = [luhn_valid(n) for n in numbers]
    try:
        given = list(answer)
    except TypeError:
        return f"give a list of True/False, one per number, got {type(answer).__name__}"
    if len(given) != len(expected):
        return f"{len(given)} answers for {len(expected)} numbers: give one True/False per number"
    if any(not isinstance(g, bool) for g in given):
        return "give True or False for each number (not strings or 0/1)"
    wrong = [i for i, (g, e) in enumerate(zip(given, expected)) if g != e]
    if not wrong:
        return None
    for slip, variant in LUHN_SLIPS.items():
        if given == [variant(n) for n in numbers]:
            return f"numbers {', '.join(str(i + 1) for i in wrong)} are wrong. That is the answer you get by {slip}"
    i = wrong[0]
    return (f"{len(wrong)} of {len(expected)} wrong, the first is number {i + 1} ({numbers[i]!r}): you said "
            f"{given[i]}")
