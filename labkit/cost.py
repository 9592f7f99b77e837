"""Local vs cloud: what a token costs each way, where the two cost lines cross, and a router that
sends every request where it belongs.

Three ways to pay for tokens:

- an **API** charges per token: a price per 1M input tokens and one per 1M output tokens, so the bill
  grows in a straight line with volume;
- a **rented GPU** charges per hour, busy or idle. One GPU that generates `tokens_per_s` while it is
  busy, and is busy a fraction `utilization` of the time, makes its tokens cost

      $ per 1M tokens = $ per hour / (tokens_per_s x 3600 x utilization) x 1e6

- **your own GPU** costs its purchase price up front, then electricity: watts x hours x $ per kWh.

Self-hosting wins only when the GPU is kept busy (at 10% utilisation every token carries ten times the
rent it carries at 100%) and when a batch of requests shares each read of the weights (batching
multiplies tokens/s, so it divides the cost per token).

Prices live in datasets/prices/*.csv. Every row names its source (a URL) and the date it was read;
`load_prices` refuses a table in which a row lacks either. `source_kind` says whether the figure was read on the
provider's own page ("provider") or in a transcription of it or another secondary source ("secondary").

Batched throughput on a data-centre GPU is projected from the committed batch-1 measurement
(`gpu_tokens_per_s`); `measured_batch_tokens_per_s` is the one place where a measured GPU serving result
replaces that projection.

Routing each request to the local model or the cloud (the hybrid router, the personal-data detector)
is labkit.router.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .bench import committed_llama_cpp_gpu_results
from .check import exercise
from .dtypes import torch_dtype
from .errors import LabkitError, require_positive, unknown
from .hardware import _sync, find_gpu
from .paths import datasets_dir
from .serving import measured_gpu_tokens_per_s
from .vram import kv_cache_bytes, parameter_count

# torch, matplotlib and tqdm are imported inside the functions that use them: `import labkit` stays quick and
# works without the optional extras.

HOURS_PER_MONTH = 730.0  # 365 x 24 / 12
PRICE_TABLES = {"api": "api_prices.csv", "gpu_rental": "gpu_rental.csv", "consumer_gpus": "consumer_gpus.csv",
                "electricity": "electricity.csv"}
_NUMBERS = ("usd_per_1m_input", "usd_per_1m_output", "usd_per_gpu_hour", "vram_gb", "launch_price_usd",
            "board_power_w", "usd_per_kwh")
SOURCE_KINDS = ("provider", "secondary")  # read on the provider's own page, or in a transcription / other source
TIERS = ("flagship", "mid", "small")  # an API model's place in its provider's line-up (open models: by size)

# ----------------------------------------------------------------------------- price tables


def prices_dir() -> Path:
    return datasets_dir() / "prices"


def load_prices(table: str | Path) -> list[dict]:
    """The rows of a price table: a name in PRICE_TABLES ('api', 'gpu_rental', 'consumer_gpus') or a CSV path.

    Numbers come back as floats. Raises LabkitError, naming the file and row, when a row has no source
    (an http(s) URL), no `read_on` date (YYYY-MM-DD) or a missing or negative number.
    """
    if isinstance(table, str) and table in PRICE_TABLES:
        path = prices_dir() / PRICE_TABLES[table]
    elif isinstance(table, (str, Path)) and str(table).endswith(".csv"):
        path = Path(table)
    else:
        raise unknown("price table", table, [*PRICE_TABLES, "<path to a .csv>"])
    if not path.is_file():
        raise LabkitError(f"no price table at {path}")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise LabkitError(f"{path.name} has no rows")
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{path.name}, line {n}"
        sources = [s.strip() for s in (row.get("source") or "").split(";") if s.strip()]
        if not sources or not all(urlparse(s).scheme in ("http", "https") and urlparse(s).netloc for s in sources):
            raise LabkitError(f"{where}: every price needs its source, an http(s) URL (several joined by ';'); "
                              f"got {row.get('source')!r}")
        if "source_kind" in row and (row["source_kind"] or "").strip() not in SOURCE_KINDS:
            raise LabkitError(f"{where}: source_kind must be one of {', '.join(SOURCE_KINDS)}, "
                              f"got {row['source_kind']!r}")
        if "tier" in row and (row["tier"] or "").strip() not in TIERS:
            raise LabkitError(f"{where}: tier must be one of {', '.join(TIERS)}, got {row['tier']!r}")
        try:
            dt.date.fromisoformat((row.get("read_on") or "").strip())
        except ValueError:
            raise LabkitError(f"{where}: every price needs the date it was read, as read_on=YYYY-MM-DD; "
                              f"got {row.get('read_on')!r}") from None
        for key in _NUMBERS:
            if key in row:
                try:
                    row[key] = float(row[key])
                except (TypeError, ValueError):
                    raise LabkitError(f"{where}: {key} must be a number, got {row[key]!r}") from None
                if not row[key] >= 0:
                    raise LabkitError(f"{where}: {key} must be zero or more, got {row[key]!r}")
    return rows


@dataclass(frozen=True)
class ApiPrice:
    """One hosted model's price per 1M input and output tokens, with where and when it was read."""

    provider: str
    model: str
    open_weights: bool
    usd_per_1m_input: float
    usd_per_1m_output: float
    source: str
    read_on: str
    source_date: str = ""
    note: str = ""
    tier: str = ""
    source_kind: str = ""

    @property
    def label(self) -> str:
        return f"{self.provider} · {self.model}"

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        return api_cost(input_tokens, output_tokens, self.usd_per_1m_input, self.usd_per_1m_output)

    def blended(self, output_share: float = 0.25) -> float:
        """$ per 1M tokens of a mix in which `output_share` of the tokens are generated."""
        return blended_price_per_1m(self.usd_per_1m_input, self.usd_per_1m_output, output_share)

    def cited(self) -> str:
        return (f"{self.label}: ${self.usd_per_1m_input:g} in / ${self.usd_per_1m_output:g} out per 1M tokens "
                f"(read {self.read_on}; {self.source})")


@dataclass(frozen=True)
class GpuOffer:
    """One GPU rental offer: $ per GPU-hour, with where and when it was read."""

    provider: str
    gpu: str
    offer: str
    usd_per_gpu_hour: float
    source: str
    read_on: str
    source_date: str = ""
    note: str = ""
    source_kind: str = ""

    @property
    def label(self) -> str:
        return f"{self.gpu.removeprefix('NVIDIA ')} · {self.provider} (${self.usd_per_gpu_hour:g}/h)"

    def cited(self) -> str:
        return f"{self.provider} {self.offer}: ${self.usd_per_gpu_hour:g} per hour (read {self.read_on}; {self.source})"


@dataclass(frozen=True)
class ConsumerGpu:
    """A GPU you buy: launch price and board power, with where and when they were read."""

    gpu: str
    vram_gb: float
    launch_price_usd: float
    board_power_w: float
    source: str
    read_on: str
    source_date: str = ""
    note: str = ""
    source_kind: str = ""


@dataclass(frozen=True)
class ElectricityPrice:
    """What a kWh costs somewhere, with where and when it was read."""

    region: str
    usd_per_kwh: float
    source: str
    read_on: str
    source_date: str = ""
    note: str = ""
    source_kind: str = ""


def _build(cls: type, rows: list[dict]) -> list:
    names = cls.__dataclass_fields__
    out = []
    for row in rows:
        values = {k: (v or "").strip() if isinstance(v, str) else v for k, v in row.items() if k in names}
        if "open_weights" in values:
            values["open_weights"] = str(values["open_weights"]).lower() in ("yes", "true", "1")
        out.append(cls(**values))
    return out


def api_prices(table: str | Path = "api") -> list[ApiPrice]:
    return _build(ApiPrice, load_prices(table))


def gpu_offers(table: str | Path = "gpu_rental") -> list[GpuOffer]:
    return _build(GpuOffer, load_prices(table))


def consumer_gpus(table: str | Path = "consumer_gpus") -> list[ConsumerGpu]:
    return _build(ConsumerGpu, load_prices(table))


def electricity_prices(table: str | Path = "electricity") -> list[ElectricityPrice]:
    return _build(ElectricityPrice, load_prices(table))


def find_electricity_price(region: str) -> ElectricityPrice:
    return _pick(electricity_prices(), region, lambda e: e.region, "region")


def _pick(items: list, text: str, key: Callable[[Any], str], kind: str) -> Any:
    """The one item whose key equals `text`, else the one that contains it (case-insensitive)."""
    if not isinstance(text, str) or not text.strip():
        raise unknown(kind, text, sorted({key(i) for i in items}))
    wanted = text.strip().lower()
    exact = [i for i in items if key(i).lower() == wanted]
    matches = exact or [i for i in items if wanted in key(i).lower()]
    if len(matches) != 1:
        raise unknown(kind, text, sorted({key(i) for i in items}))
    return matches[0]


def find_api_price(provider: str, model: str) -> ApiPrice:
    """The price row of `model` at `provider`, e.g. find_api_price('OpenAI', 'GPT-4o')."""
    rows = api_prices()
    at = [r for r in rows if r.provider.lower() == str(provider).strip().lower()]
    if not at:
        raise unknown("provider", provider, sorted({r.provider for r in rows}))
    return _pick(at, model, lambda r: r.model, f"model at {at[0].provider}")


def cheapest_gpu_offer(gpu: str) -> GpuOffer:
    """The cheapest rental offer for a GPU, e.g. cheapest_gpu_offer('H100') (names as in gpu_rental.csv)."""
    offers = gpu_offers()
    name = _pick(sorted({o.gpu for o in offers}), gpu, lambda g: g, "GPU")
    return min((o for o in offers if o.gpu == name), key=lambda o: o.usd_per_gpu_hour)


def offer_for_this_machine(gpu_name: str | None = None) -> GpuOffer:
    """What renting a machine like this one costs per hour: the cheapest offer for its GPU, by the name torch
    reports (e.g. 'NVIDIA H200', 'NVIDIA A100-SXM4-80GB', 'Tesla T4'); the 2-vCPU CPU offer when there is no GPU.
    A GPU the rental table lacks (a desktop card, say) is priced as the CPU offer, with a printed note."""

    offers = gpu_offers()
    cpu = min((o for o in offers if o.gpu.startswith("CPU")), key=lambda o: o.usd_per_gpu_hour)
    if not gpu_name:
        return cpu
    words = set(re.sub(r"[-_]", " ", gpu_name).upper().split())
    matching = [o for o in offers if not o.gpu.startswith("CPU")
                and set(o.gpu.upper().removeprefix("NVIDIA ").split()) <= words]
    if not matching:
        print(f"note: no rental price for {gpu_name} in datasets/prices/gpu_rental.csv; priced as {cpu.gpu}")
        return cpu
    most_specific = max(len(o.gpu.split()) for o in matching)
    return min((o for o in matching if len(o.gpu.split()) == most_specific), key=lambda o: o.usd_per_gpu_hour)


def find_consumer_gpu(gpu: str) -> ConsumerGpu:
    return _pick(consumer_gpus(), gpu, lambda g: g.gpu, "consumer GPU")


def prices_markdown(rows: Sequence[ApiPrice | GpuOffer | ConsumerGpu | ElectricityPrice]) -> str:
    """A Markdown table of price rows, each with its source link and the date it was read."""
    if not rows:
        raise LabkitError("prices_markdown needs at least one row")
    first = rows[0]
    if isinstance(first, ApiPrice):
        head = "| provider | model | open weights | tier | $ / 1M input | $ / 1M output |"
        body = [f"| {r.provider} | {r.model} | {'yes' if r.open_weights else 'no'} | {r.tier or '-'} | "
                f"{r.usd_per_1m_input:g} | {r.usd_per_1m_output:g} |" for r in rows]
    elif isinstance(first, GpuOffer):
        head = "| GPU | provider | offer | $ / GPU-hour |"
        body = [f"| {r.gpu} | {r.provider} | {r.offer} | {r.usd_per_gpu_hour:.2f} |" for r in rows]
    elif isinstance(first, ConsumerGpu):
        head = "| GPU | VRAM (GB) | launch price ($) | board power (W) |"
        body = [f"| {r.gpu} | {r.vram_gb:g} | {r.launch_price_usd:,.0f} | {r.board_power_w:g} |" for r in rows]
    else:
        head = "| region | $ / kWh |"
        body = [f"| {r.region} | {r.usd_per_kwh:.4f} |" for r in rows]
    head += " read on | source |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r, line in zip(rows, body):
        links = " ".join(f"[{urlparse(s.strip()).netloc}]({s.strip()})" for s in r.source.split(";"))
        stated = f" (source's date: {r.source_date})" if r.source_date else ""
        kind = {"provider": "provider's page: ", "secondary": "secondary: "}.get(r.source_kind, "")
        lines.append(f"{line} {r.read_on}{stated} | {kind}{links} |")
    return "\n".join(lines)


def gpu_price_range(gpu: str) -> tuple[float, float]:
    """The cheapest and dearest hourly price in the rental table of every GPU whose name contains `gpu`."""
    offers = [o for o in gpu_offers() if str(gpu).strip().lower() in o.gpu.lower()]
    if not offers or not str(gpu).strip():
        raise unknown("GPU", gpu, sorted({o.gpu for o in gpu_offers()}))
    hourly = [o.usd_per_gpu_hour for o in offers]
    return min(hourly), max(hourly)


@dataclass(frozen=True)
class PriceLandscape:
    """What the API price table says, computed from it (blended $ per 1M tokens at `output_share`)."""

    output_share: float
    rows: list  # every ApiPrice row, in table order
    blended: dict  # {(provider, model): blended price}
    small_open: list  # ApiPrice rows of small open-weight models (8B class)
    flagships: list  # ApiPrice rows of the closed providers' flagships
    small_closed: list  # ApiPrice rows of the closed providers' small models
    closed_under_open: list  # (closed row, open row) pairs where the closed model costs no more than the open one

    def price(self, row: ApiPrice) -> float:
        return self.blended[(row.provider, row.model)]

    def ratio_range(self, dear: list, cheap: list) -> tuple[float, float]:
        """(smallest, largest) ratio of a `dear` row's price to a `cheap` row's."""
        ratios = [self.price(d) / self.price(c) for d in dear for c in cheap]
        return min(ratios), max(ratios)


def api_price_landscape(prices: Sequence[ApiPrice] | None = None, output_share: float = 0.25) -> PriceLandscape:
    """Which models cost what, by tier and openness, from the price table (blended at `output_share`)."""
    rows = list(prices if prices is not None else api_prices())
    blended = {(r.provider, r.model): r.blended(output_share) for r in rows}
    opened = [r for r in rows if r.open_weights]
    closed = [r for r in rows if not r.open_weights]
    under = [(c, o) for c in closed for o in opened if blended[(c.provider, c.model)] <= blended[(o.provider, o.model)]]
    return PriceLandscape(output_share, rows, blended, [r for r in opened if r.tier == "small"],
                          [r for r in closed if r.tier == "flagship"], [r for r in closed if r.tier == "small"], under)


def price_landscape_markdown(land: PriceLandscape) -> str:
    """The table's lessons as Markdown, every number computed from the table (so it stays true when prices move)."""
    def names(rows: list) -> str:
        return ", ".join(sorted({f"{r.model}" for r in rows}))

    lines = []
    if land.flagships and land.small_open:
        low, high = land.ratio_range(land.flagships, land.small_open)
        lines.append(f"* **Size sets the price more than openness.** The flagships ({names(land.flagships)}) cost "
                     f"{low:,.0f}x to {high:,.0f}x as much per token as the hosted 8B-class open models "
                     f"(blended, {land.output_share:.0%} of the tokens generated).")
    if land.closed_under_open:
        opened = [r for r in land.rows if r.open_weights]
        undercut: dict = {}
        for c, o in land.closed_under_open:
            undercut.setdefault(c.model, (c, set()))[1].add((o.provider, o.model))
        parts = [f"{m} (${land.price(c):.2f}) costs no more than {len(os)} of the {len(opened)} open-weight rows"
                 for m, (c, os) in sorted(undercut.items(), key=lambda kv: land.price(kv[1][0]))]
        lines.append(f"* **Open is not always cheaper.** {'; '.join(parts)}. A small closed model competes with "
                     "hosted open ones on price; what open weights buy is control, privacy and the option to run "
                     "them yourself.")
    else:
        lines.append("* **Every closed model costs more than every hosted open-weight model in this table.**")
    eights = [r for r in land.small_open if "8B" in r.model]
    if len({r.provider for r in eights}) > 1:
        cheap = min(eights, key=lambda r: r.usd_per_1m_input)
        dear = max(eights, key=lambda r: r.usd_per_1m_input)
        lines.append(f"* **The same model costs different amounts at different hosts**: Llama 3.1 8B input from "
                     f"${cheap.usd_per_1m_input:.2f} ({cheap.provider}) to ${dear.usd_per_1m_input:.2f} "
                     f"({dear.provider})"
                     f" per 1M tokens, {dear.usd_per_1m_input / cheap.usd_per_1m_input:.0f}x apart.")
    pricier_out = sum(r.usd_per_1m_output > r.usd_per_1m_input for r in land.rows)
    lines.append(f"* **Output costs more than input** in {pricier_out} of {len(land.rows)} rows (the others charge "
                 "the same): a prompt is read in one parallel pass, every output token needs a pass of its own.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- cost formulas


def api_cost(input_tokens: float, output_tokens: float, usd_per_1m_input: float, usd_per_1m_output: float) -> float:
    """$ for a token mix at an API's prices: tokens / 1e6 x $ per 1M, input and output separately."""
    for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens),
                        ("usd_per_1m_input", usd_per_1m_input), ("usd_per_1m_output", usd_per_1m_output)):
        require_positive(name, value, allow_zero=True)
    return input_tokens / 1e6 * usd_per_1m_input + output_tokens / 1e6 * usd_per_1m_output


def blended_price_per_1m(usd_per_1m_input: float, usd_per_1m_output: float, output_share: float) -> float:
    """$ per 1M tokens of a mix whose generated share is `output_share` (0-1)."""
    _require_fraction("output_share", output_share, allow_zero=True)
    return api_cost(1e6 * (1 - output_share), 1e6 * output_share, usd_per_1m_input, usd_per_1m_output)


def self_hosted_cost_per_1m(usd_per_hour: float, tokens_per_s: float, utilization: float = 1.0,
                            power_w: float = 0.0, usd_per_kwh: float = 0.0) -> float:
    """$ per 1M tokens from a GPU that costs `usd_per_hour` (rent, or amortised purchase) every hour,
    generates `tokens_per_s` while busy and is busy a fraction `utilization` of the time; plus the
    electricity of the busy seconds (`power_w` watts at `usd_per_kwh`).

    >>> round(self_hosted_cost_per_1m(2.0, 1000, utilization=0.5), 4)   # 2 / (1000 x 3600 x 0.5) x 1e6
    1.1111
    """
    require_positive("usd_per_hour", usd_per_hour, allow_zero=True)
    require_positive("tokens_per_s", tokens_per_s)
    _require_fraction("utilization", utilization)
    require_positive("power_w", power_w, allow_zero=True)
    require_positive("usd_per_kwh", usd_per_kwh, allow_zero=True)
    rent = usd_per_hour / (tokens_per_s * 3600 * utilization) * 1e6
    energy_kwh_per_1m = power_w / 1000 * (1e6 / tokens_per_s) / 3600
    return rent + energy_kwh_per_1m * usd_per_kwh


def capacity_tokens_per_month(tokens_per_s: float, utilization: float = 1.0, hours: float = HOURS_PER_MONTH) -> float:
    """Tokens one GPU produces in a month at this speed and utilisation."""
    require_positive("tokens_per_s", tokens_per_s)
    _require_fraction("utilization", utilization)
    require_positive("hours", hours)
    return tokens_per_s * 3600 * hours * utilization


def break_even_tokens_per_month(fixed_usd_per_month: float, api_usd_per_1m: float,
                                variable_usd_per_1m: float = 0.0) -> float:
    """Monthly tokens at which self-hosting (a fixed monthly cost plus a variable cost per 1M tokens,
    e.g. electricity) costs the same as an API at `api_usd_per_1m`: fixed / (api - variable) x 1e6.
    Infinite when the API is cheaper per token than the variable cost alone."""
    require_positive("fixed_usd_per_month", fixed_usd_per_month, allow_zero=True)
    require_positive("api_usd_per_1m", api_usd_per_1m)
    require_positive("variable_usd_per_1m", variable_usd_per_1m, allow_zero=True)
    margin = api_usd_per_1m - variable_usd_per_1m
    return math.inf if margin <= 0 else fixed_usd_per_month / margin * 1e6


def payback_months(purchase_usd: float, monthly_api_usd: float, monthly_running_usd: float = 0.0) -> float:
    """Months until hardware you buy has paid for itself: purchase / (API bill avoided - running costs).
    Infinite when running it costs as much as the API bill it replaces."""
    require_positive("purchase_usd", purchase_usd, allow_zero=True)
    require_positive("monthly_api_usd", monthly_api_usd, allow_zero=True)
    require_positive("monthly_running_usd", monthly_running_usd, allow_zero=True)
    saving = monthly_api_usd - monthly_running_usd
    return math.inf if saving <= 0 else purchase_usd / saving


def electricity_usd_per_month(power_w: float, busy_hours: float, usd_per_kwh: float) -> float:
    require_positive("power_w", power_w, allow_zero=True)
    require_positive("busy_hours", busy_hours, allow_zero=True)
    require_positive("usd_per_kwh", usd_per_kwh, allow_zero=True)
    return power_w / 1000 * busy_hours * usd_per_kwh


def _require_fraction(name: str, value: float, allow_zero: bool = False) -> None:
    require_positive(name, value, allow_zero=allow_zero)
    if value > 1:
        raise LabkitError(f"{name} is a fraction between 0 and 1 (0.5 = half the time), got {value!r}")


@dataclass(frozen=True)
class Workload:
    """A described workload: requests per day, tokens in and out per request."""

    name: str
    requests_per_day: float
    input_tokens: float
    output_tokens: float
    days: float = 30.4  # 365 / 12

    def __post_init__(self) -> None:
        for key in ("requests_per_day", "input_tokens", "output_tokens", "days"):
            require_positive(key, getattr(self, key), allow_zero=key != "days")

    @property
    def monthly_input_tokens(self) -> float:
        return self.requests_per_day * self.days * self.input_tokens

    @property
    def monthly_output_tokens(self) -> float:
        return self.requests_per_day * self.days * self.output_tokens

    @property
    def monthly_tokens(self) -> float:
        return self.monthly_input_tokens + self.monthly_output_tokens

    @property
    def output_share(self) -> float:
        return self.monthly_output_tokens / self.monthly_tokens if self.monthly_tokens else 0.0


def monthly_bill(workload: Workload, api: ApiPrice, gpu: GpuOffer, tokens_per_s: float,
                 max_utilization: float = 0.6) -> dict:
    """One month of `workload` both ways: the API bill, and always-on rented GPUs (as many as the volume
    needs when each may be busy at most `max_utilization` of the time; `tokens_per_s` counts input and
    output tokens the GPU serves per second).

    Returns {"api_usd", "gpus", "self_hosted_usd", "utilization", "self_hosted_usd_per_1m", "api_usd_per_1m"}.
    """
    require_positive("tokens_per_s", tokens_per_s)
    _require_fraction("max_utilization", max_utilization)
    api_usd = api.cost(workload.monthly_input_tokens, workload.monthly_output_tokens)
    capacity = capacity_tokens_per_month(tokens_per_s, max_utilization)
    gpus = max(1, math.ceil(workload.monthly_tokens / capacity))
    self_usd = gpus * gpu.usd_per_gpu_hour * HOURS_PER_MONTH
    busy = workload.monthly_tokens / (gpus * capacity_tokens_per_month(tokens_per_s))
    tokens = workload.monthly_tokens
    return {"api_usd": api_usd, "gpus": gpus, "self_hosted_usd": self_usd, "utilization": busy,
            "api_usd_per_1m": api_usd / tokens * 1e6 if tokens else math.nan,
            "self_hosted_usd_per_1m": self_usd / tokens * 1e6 if tokens else math.nan}


def plot_cost_vs_utilization(setups: dict[str, tuple[float, float]], apis: Sequence[ApiPrice],
                             output_share: float = 0.25, ax=None):
    """$ per 1M tokens vs utilisation for self-hosted setups {label: ($ per hour, tokens/s)}, with each
    API's blended price as a flat line: where a curve dips under a line, that setup is cheaper."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.4))
    utils = np.linspace(0.02, 1.0, 100)
    for label, (usd_per_hour, tps) in setups.items():
        ax.plot(utils * 100, [self_hosted_cost_per_1m(usd_per_hour, tps, u) for u in utils], lw=2, label=label)
    for api, style in zip(apis, ["--", ":", "-.", (0, (5, 1))]):
        ax.axhline(api.blended(output_share), color="#555", ls=style, lw=1.2,
                   label=f"API {api.label}: ${api.blended(output_share):.3g}/1M")
    ax.set_yscale("log")
    ax.set_xlabel("utilisation (% of the hours the GPU is generating)")
    ax.set_ylabel("$ per 1M tokens")
    ax.set_title("Idle hours are paid too: cost per token vs utilisation")
    ax.legend(fontsize=7.5, loc="upper right")
    return ax.figure


# ----------------------------------------------------------------------------- break-even


@dataclass(frozen=True)
class BreakEven:
    """Always-on rented GPUs vs an API, for a monthly volume. The GPUs are busy `utilization` of the
    time, so one GPU serves `capacity` tokens a month; the API bill is a straight line."""

    monthly_tokens: float
    gpu: GpuOffer
    api: ApiPrice
    tokens_per_s: float
    utilization: float
    output_share: float = 0.25
    throughput_note: str = ""

    @property
    def api_usd_per_1m(self) -> float:
        return self.api.blended(self.output_share)

    @property
    def gpu_usd_per_month(self) -> float:
        return self.gpu.usd_per_gpu_hour * HOURS_PER_MONTH

    @property
    def capacity(self) -> float:
        return capacity_tokens_per_month(self.tokens_per_s, self.utilization)

    @property
    def self_hosted_usd_per_1m(self) -> float:
        """At full load of every GPU (the cheapest a self-hosted token gets at this utilisation)."""
        return self_hosted_cost_per_1m(self.gpu.usd_per_gpu_hour, self.tokens_per_s, self.utilization)

    @property
    def break_even_tokens(self) -> float:
        """Monthly tokens at which one GPU's rent equals the API bill (infinite when the API is cheaper
        per token even for a fully used GPU)."""
        if self.self_hosted_usd_per_1m >= self.api_usd_per_1m:
            return math.inf
        return break_even_tokens_per_month(self.gpu_usd_per_month, self.api_usd_per_1m)

    def gpus_needed(self, tokens: float) -> int:
        return max(1, math.ceil(tokens / self.capacity))

    def self_hosted_usd(self, tokens: float) -> float:
        return self.gpus_needed(tokens) * self.gpu_usd_per_month

    def api_usd(self, tokens: float) -> float:
        return tokens / 1e6 * self.api_usd_per_1m

    @property
    def cheaper(self) -> str:
        return "self-hosted" if self.self_hosted_usd(self.monthly_tokens) < self.api_usd(self.monthly_tokens) else "API"

    def summary(self) -> str:
        v = self.monthly_tokens
        be = self.break_even_tokens
        crossing = ("never: even a fully used GPU costs more per token than the API"
                    if math.isinf(be) else f"{_tokens(be)} tokens a month")
        return (f"{_tokens(v)} tokens/month · API {self.api.label}: ${self.api_usd(v):,.0f}/month "
                f"(${self.api_usd_per_1m:.3g} per 1M) · self-hosted {self.gpus_needed(v)} x {self.gpu.gpu} "
                f"at ${self.gpu.usd_per_gpu_hour:.2f}/h: ${self.self_hosted_usd(v):,.0f}/month "
                f"(${self.self_hosted_usd_per_1m:.3g} per 1M when busy {self.utilization:.0%} of the time) · "
                f"break-even: {crossing} · cheaper here: {self.cheaper}")

    def html(self) -> str:
        v, be = self.monthly_tokens, self.break_even_tokens
        crossing = ("<b>never</b>: even a fully used GPU costs more per token than the API"
                    if math.isinf(be) else f"<b>{_tokens(be)}</b> tokens a month")
        winner = "#1a7f37" if self.cheaper == "self-hosted" else "#0969da"
        return (
            "<div class='labkit-break-even' style='line-height:1.5'>"
            f"<div>{_tokens(v)} tokens a month ({self.output_share:.0%} of them generated)</div>"
            f"<div>API · {html.escape(self.api.label)}: <b class='api-bill'>${self.api_usd(v):,.0f}</b> a month "
            f"(${self.api_usd_per_1m:.3g} per 1M tokens)</div>"
            f"<div>Self-hosted · {self.gpus_needed(v)} x {html.escape(self.gpu.gpu)} at "
            f"${self.gpu.usd_per_gpu_hour:.2f}/h ({html.escape(self.gpu.provider)}): "
            f"<b class='self-bill'>${self.self_hosted_usd(v):,.0f}</b> a month "
            f"(${self.self_hosted_usd_per_1m:.3g} per 1M at {self.tokens_per_s:,.0f} tokens/s, busy "
            f"{self.utilization:.0%} of the time)</div>"
            f"<div>Break-even: {crossing} · cheaper at this volume: "
            f"<b style='color:{winner}'>{self.cheaper}</b></div>"
            f"<div style='font-size:85%;color:#555'>{html.escape(self.throughput_note)} Prices read "
            f"{self.api.read_on} ({html.escape(_where_read(self.api))}) and {self.gpu.read_on} "
            f"({html.escape(_where_read(self.gpu))}).</div></div>")


def _where_read(row: ApiPrice | GpuOffer) -> str:
    """The host a price was read on, and 'secondary' when it was read in a transcription, not the provider's page."""
    hosts = [urlparse(s.strip()).netloc for s in row.source.split(";")]
    return f"secondary: {hosts[-1]}" if row.source_kind == "secondary" else hosts[0]


def _tokens(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:,.3g}{unit}"
    return f"{n:,.0f}"


def plot_cost_vs_volume(be: BreakEven, volumes: Sequence[float] | None = None, ax=None):
    """Monthly cost vs monthly tokens for both sides (log-log), with the crossing point and `be`'s volume."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.4))
    cap = be.capacity
    top = max(be.monthly_tokens, be.break_even_tokens if math.isfinite(be.break_even_tokens) else 0, cap) * 20
    vols = np.geomspace(1e5, top, 400) if volumes is None else np.asarray(volumes, dtype=float)
    ax.plot(vols, [be.api_usd(v) for v in vols], color="#0969da", lw=2, label=f"API: {be.api.label}")
    ax.step(vols, [be.self_hosted_usd(v) for v in vols], where="post", color="#1a7f37", lw=2,
            label=f"rented {be.gpu.gpu.removeprefix('NVIDIA ')} (${be.gpu.usd_per_gpu_hour:.2f}/h), "
                  f"busy {be.utilization:.0%}")
    if math.isfinite(be.break_even_tokens):
        x = be.break_even_tokens
        ax.plot([x], [be.api_usd(x)], "o", color="#d62728", ms=9, zorder=5,
                label=f"break-even: {_tokens(x)} tokens/month")
    ax.axvline(be.monthly_tokens, color="#555", ls=":", label=f"your volume: {_tokens(be.monthly_tokens)}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens per month")
    ax.set_ylabel("$ per month")
    ax.set_title("Monthly cost: pay per token vs rent a GPU")
    ax.legend(fontsize=8, loc="upper left")
    return ax.figure


# ----------------------------------------------------------------------------- throughput and batching


def reference_gpu_result(gguf_type: str = "Q4_K_M"):
    """The committed llama.cpp-on-CUDA measurement (Llama 3.1 8B architecture, batch 1) of one GGUF type."""
    rows = [r for r in committed_llama_cpp_gpu_results() if r.runtime.endswith(gguf_type)]
    if not rows:
        raise LabkitError(f"no committed llama.cpp GPU result for {gguf_type!r} in datasets/results/llama_cpp_cuda.json")
    return rows[0]


def projected_batch_tokens_per_s(batch1_tokens_per_s: float, batch: int, weight_bytes: float,
                                 kv_bytes_per_sequence: float, compute_tokens_per_s: float | None = None) -> float:
    """Decode tokens/s of `batch` sequences at once, projected from a measured batch-1 speed.

    A decode step reads the weights once for the whole batch, plus each sequence's own KV cache. The
    batch-1 measurement gives the bandwidth the runtime really achieves,
    bw = tokens/s x (weights + one KV cache), so a step of `batch` sequences takes
    (weights + batch x KV) / bw and yields `batch` tokens. Past some batch the arithmetic, not the
    memory, is the limit: `compute_tokens_per_s` (peak FLOP/s / (2 x parameters)) caps the result.
    """
    require_positive("batch1_tokens_per_s", batch1_tokens_per_s)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise LabkitError(f"batch must be a whole number of sequences (1 or more), got {batch!r}")
    require_positive("weight_bytes", weight_bytes)
    require_positive("kv_bytes_per_sequence", kv_bytes_per_sequence, allow_zero=True)
    bandwidth = batch1_tokens_per_s * (weight_bytes + kv_bytes_per_sequence)
    memory_bound = batch * bandwidth / (weight_bytes + batch * kv_bytes_per_sequence)
    if compute_tokens_per_s is not None:
        require_positive("compute_tokens_per_s", compute_tokens_per_s)
        return min(memory_bound, compute_tokens_per_s)
    return memory_bound


def measured_batch_tokens_per_s(gpu: str, batch: int) -> tuple[float, str] | None:
    """A MEASURED decode throughput of Llama 3.1 8B on `gpu` at `batch` concurrent sequences, with its note, or
    None where no such measurement is committed.

    The one place where a measured GPU serving result (notebook 09's benchmark, datasets/results/serving_gpu*.json)
    replaces the projection of `gpu_tokens_per_s`, and with it every number notebook 08 and its widget derive from
    batched throughput."""
    return measured_gpu_tokens_per_s(gpu, batch)


def gpu_tokens_per_s(gpu: str, batch: int = 1, context: int = 2048, reference=None) -> tuple[float, str]:
    """Decode tokens/s of Llama 3.1 8B (Q4_K_M, llama.cpp) on `gpu` at `batch` concurrent sequences,
    and a note saying where the number comes from.

    Batch 1 on the H100 is the committed measurement; another GPU gets the same share of its own
    bandwidth (gpus.json datasheets); batches are projected with `projected_batch_tokens_per_s`,
    capped by the GPU's datasheet fp16 FLOP/s.
    """
    measured = measured_batch_tokens_per_s(gpu, batch) if reference is None else None
    if measured is not None:
        return measured
    ref = reference or reference_gpu_result()
    target, h100 = find_gpu(gpu), find_gpu("H100")
    kv = kv_cache_bytes("llama-3.1-8b", context, kv_dtype="fp16")
    weights = ref.bytes_per_token
    batch1 = ref.decode_tokens_per_s * target["bandwidth_gbps"] / h100["bandwidth_gbps"]
    compute = target["fp16_tflops"] * 1e12 / (2 * parameter_count("llama-3.1-8b"))
    tps = projected_batch_tokens_per_s(batch1, batch, weights, kv, compute)
    measured = "measured" if target["name"] == h100["name"] and batch == 1 else "projected"
    note = (f"{tps:,.0f} tokens/s: Llama 3.1 8B Q4_K_M in llama.cpp, batch {batch}, {measured} from the committed "
            f"H100 batch-1 measurement ({ref.decode_tokens_per_s:.0f} tokens/s)"
            + ("" if target["name"] == h100["name"] else f" scaled by memory bandwidth to the {target['name']}") + ".")
    return tps, note


def measure_matmul_flops(device: str = "cpu", size: int = 1024, dtype: str = "fp32", repeats: int = 5,
                         shape: tuple[int, int, int] | None = None) -> float:
    """FLOP/s of a matrix product on `device` (best of `repeats`): square `size` x `size` by default, the compute
    ceiling of batching; `shape=(m, k, n)` times an (m x k) @ (k x n) product instead, e.g. a batch of m
    sequences through one of the model's layers."""
    import torch

    require_positive("size", size)
    m, k, n = shape if shape is not None else (size, size, size)
    for name, value in (("m", m), ("k", k), ("n", n)):
        require_positive(f"shape's {name}", value)
    a = torch.randn(m, k, dtype=torch_dtype(dtype), device=device)
    b = torch.randn(k, n, dtype=torch_dtype(dtype), device=device)
    best = math.inf
    for i in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best


@dataclass(frozen=True)
class BatchPoint:
    batch: int
    new_tokens: int
    seconds: float
    prefill_seconds: float = math.nan  # the same call with one new token: the prompts' prefill and one step

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens (all sequences) per second of wall time, prefill included."""
        return self.batch * self.new_tokens / self.seconds

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second of the decode steps alone: the run minus its prefill (NaN when not measured, or
        when the two timings are too close to subtract on a busy machine)."""
        decode = self.seconds - self.prefill_seconds
        if not decode > 0.1 * self.seconds or self.new_tokens < 2:
            return math.nan
        return self.batch * (self.new_tokens - 1) / decode

    @property
    def step_seconds(self) -> float:
        """Seconds per decode step (one new token for every sequence of the batch)."""
        return self.batch / self.decode_tokens_per_s


def measure_batch_throughput(model: Any, tokenizer: Any, prompt: str, batch_sizes: Sequence[int] = (1, 2, 4, 8),
                             new_tokens: int = 16) -> list[BatchPoint]:
    """Time `model.generate` on `batch` copies of the prompt for each batch size (greedy, exactly
    `new_tokens` new tokens each), after one untimed warm-up. Progress shows with tqdm."""
    import torch
    from tqdm.auto import tqdm

    require_positive("new_tokens", new_tokens)
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise LabkitError(f"batch_sizes must be whole numbers of 1 or more, got {batch_sizes!r}")
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def run(batch: int, n: int) -> float:
        inputs = ids.repeat(batch, 1)
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, pad_token_id=pad)
        return time.perf_counter() - start

    run(1, 2)  # warm-up: allocators, thread pools
    points = []
    for b in tqdm(list(batch_sizes), desc="batch sizes", leave=False):
        prefill = run(b, 1)
        points.append(BatchPoint(b, new_tokens, run(b, new_tokens), prefill))
    return points


def additive_batch_tokens_per_s(batch1_step_seconds: float, batch: int, parameters: float,
                                flops_per_s: float) -> float:
    """Decode tokens/s of `batch` sequences when the arithmetic does NOT hide under the memory reads: every extra
    sequence adds its 2 x parameters FLOPs at `flops_per_s` to the batch-1 step. The other bound to
    `projected_batch_tokens_per_s`, which assumes the arithmetic is free until it becomes the limit: on a CPU the
    same few cores read the weights and do the arithmetic, so the truth lies between the two."""
    require_positive("batch1_step_seconds", batch1_step_seconds)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise LabkitError(f"batch must be a whole number of sequences (1 or more), got {batch!r}")
    require_positive("parameters", parameters)
    require_positive("flops_per_s", flops_per_s)
    step = batch1_step_seconds + (batch - 1) * 2 * parameters / flops_per_s
    return batch / step


def flops_per_byte_ratio(gpu: str, cpu_flops_per_s: float, cpu_bytes_per_s: float) -> float:
    """How many times more FLOP/s per byte/s of bandwidth `gpu` has (datasheet fp16 FLOP/s and bandwidth) than
    this machine (measured matmul FLOP/s and copy bandwidth): the larger it is, the longer batching stays free."""
    require_positive("cpu_flops_per_s", cpu_flops_per_s)
    require_positive("cpu_bytes_per_s", cpu_bytes_per_s)
    card = find_gpu(gpu)
    return (card["fp16_tflops"] * 1e12 / (card["bandwidth_gbps"] * 1e9)) / (cpu_flops_per_s / cpu_bytes_per_s)


def batching_markdown(points: Sequence[BatchPoint], projected: dict[int, float], additive: dict[int, float],
                      flops_per_s: float, compute_tokens_per_s: float, gpu_ratio: float | None = None,
                      thin: tuple[tuple[int, int, int], float] | None = None) -> str:
    """What this machine's batching measurement shows, every number computed from the measurement: the gain, the
    estimates beside it, and where the gap between them goes (the prefill, and arithmetic that is not free).
    `thin`: ((m, k, n), FLOP/s) of a product of the model's own shape at the largest batch."""
    if not points:
        raise LabkitError("batching_markdown needs at least one measured batch size")
    first, last = points[0], points[-1]
    b = last.batch
    gain = last.tokens_per_s / first.tokens_per_s
    lines = [f"Measured here: **{first.tokens_per_s:.1f} → {last.tokens_per_s:.1f} generated tokens/s** from batch "
             f"{first.batch} to {b}, {gain:.1f}x the throughput for {b // first.batch}x the sequences. The "
             f"memory-bound estimate says {projected[b]:.1f} tokens/s at batch {b}, "
             f"{projected[b] / last.tokens_per_s:.1f}x the measurement. Where the difference goes:"]
    if math.isfinite(last.prefill_seconds):
        share = last.prefill_seconds / last.seconds
        decode = (f"; the decode steps alone ran at {last.decode_tokens_per_s:.1f} tokens/s"
                  if math.isfinite(last.decode_tokens_per_s) else "")
        lines.append(f"* **the prefill**: reading {b} prompts took {last.prefill_seconds:.2f} s of the "
                     f"{last.seconds:.2f} s run ({share:.0%}){decode}. The estimate counts decode steps only.")
    if math.isfinite(first.step_seconds) and math.isfinite(last.step_seconds):
        ratio = last.step_seconds / first.step_seconds
        lines.append(f"* **arithmetic is not free here**: a decode step of {b} sequences took {ratio:.1f}x the time "
                     f"of a step of {first.batch} (the estimate assumes 1x until the compute ceiling of "
                     f"{compute_tokens_per_s:,.0f} tokens/s, from a square matrix product at "
                     f"{flops_per_s / 1e9:,.0f} GFLOP/s). On a CPU the same few cores stream the weights and do the "
                     f"multiplications, so each extra sequence's arithmetic adds time instead of hiding under the "
                     f"memory reads. Counting it as added time gives {additive[b]:.1f} tokens/s at batch {b}.")
        decode_b = last.decode_tokens_per_s
        low, high = sorted((additive[b], projected[b]))
        where = ("between the two estimates" if low <= decode_b <= high
                 else "below both estimates" if decode_b < low else "above both estimates")
        lines.append(f"* the measured decode speed at batch {b}, {decode_b:.1f} tokens/s, lies **{where}** "
                     f"({low:.1f} and {high:.1f}).")
    if thin is not None:
        (m, k, n), thin_flops = thin
        lines.append(f"* **thin products are slower**: both estimates use the square product's {flops_per_s / 1e9:,.0f} "
                     f"GFLOP/s, but a product of this model's own shape at batch {m} ({m} x {k} by {k} x {n}) ran at "
                     f"{thin_flops / 1e9:,.0f} GFLOP/s ({thin_flops / flops_per_s:.0%} of it): few rows leave the "
                     "cores waiting on the weights they read.")
    if gpu_ratio is not None:
        lines.append(f"\nAn H100's datasheet has **{gpu_ratio:,.0f}x** more FLOP/s per byte/s of bandwidth than this "
                     "machine's measured matrix product and memory copy, so there a batch's arithmetic stays hidden "
                     "under the weight reads up to a much larger batch: batching keeps paying much longer.")
    return "\n".join(lines)


def plot_batching(measured: Sequence[BatchPoint], projected: dict[int, float] | None = None,
                  gpu: dict[int, float] | None = None, usd_per_hour: float | None = None, title: str = "",
                  gpu_label: str = "projected: H100, 8B Q4_K_M", gpu_projection: dict[int, float] | None = None):
    """Tokens/s vs batch size: measured here (and the projection for here), plus a GPU's curve (`gpu_label` says
    measured or projected; `gpu_projection` adds its projection, dashed); with `usd_per_hour`, a second panel of the
    GPU's $ per 1M tokens vs batch."""
    import matplotlib.pyplot as plt

    panels = 2 if gpu and usd_per_hour else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2))
    axes = [axes] if panels == 1 else list(axes)
    ax = axes[0]
    ax.plot([p.batch for p in measured], [p.tokens_per_s for p in measured], "o-", color="#1a7f37",
            label="measured on this machine")
    if projected:
        ax.plot(list(projected), list(projected.values()), "s--", color="#8da0cb", label="projected for this machine")
    if gpu:
        ax.plot(list(gpu), list(gpu.values()), "^-", color="#d62728", label=gpu_label)
        if gpu_projection:
            ax.plot(list(gpu_projection), list(gpu_projection.values()), "^--", color="#d62728", alpha=0.45,
                    label="projected from batch 1 (section 5's rule)")
        ax.set_yscale("log")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (sequences decoded together)")
    ax.set_ylabel("generated tokens / s")
    ax.set_title(title or "Batching: one read of the weights, many tokens")
    ax.legend(fontsize=8)
    if panels == 2:
        ax2 = axes[1]
        ax2.plot(list(gpu), [self_hosted_cost_per_1m(usd_per_hour, t) for t in gpu.values()], "^-", color="#d62728")
        ax2.set_xscale("log", base=2)
        ax2.set_yscale("log")
        ax2.set_xlabel("batch")
        ax2.set_ylabel("$ per 1M tokens (fully used)")
        ax2.set_title(f"H100 at ${usd_per_hour:.2f}/h: cost per token vs batch")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- what the break-even widget computes


def widget_gpu_offers() -> list[GpuOffer]:
    """Rental offers whose GPU has a datasheet entry (gpus.json), so its throughput can be projected."""
    usable = []
    for offer in gpu_offers():
        try:
            find_gpu(offer.gpu)
        except LabkitError:
            continue
        usable.append(offer)
    return usable


def break_even_for(monthly_tokens: float, offer: GpuOffer, api: ApiPrice, utilization: float, batch: int,
                   output_share: float = 0.25) -> BreakEven:
    """The widget's one computation: project the GPU's tokens/s at `batch`, then compare with the API."""
    require_positive("monthly_tokens", monthly_tokens)
    tps, note = gpu_tokens_per_s(offer.gpu, batch)
    return BreakEven(monthly_tokens, offer, api, tps, utilization, output_share, note)


# ----------------------------------------------------------------------------- exercises


@exercise("08.cost_per_1m_tokens",
          hint="Work out how many tokens one hour of rent buys when the GPU is generating only part of that hour; "
               "the price of one token follows, and you want a million of them.", rtol=0.01,
          slips={"forgetting the utilisation (the GPU is busy only part of every paid hour)":
                 lambda expected, utilization, **_: expected * utilization,
                 "multiplying by the utilisation where it divides": lambda expected, utilization, **_:
                 expected * utilization**2,
                 "leaving out the 3,600 seconds of an hour": 3600.0,
                 "giving the price of one token instead of a million": 1e-6})
def _expected_cost_per_1m(usd_per_hour: float, tokens_per_s: float, utilization: float) -> float:
    return self_hosted_cost_per_1m(usd_per_hour, tokens_per_s, utilization)


@exercise("08.break_even_tokens",
          hint="Put the two monthly bills side by side: the rent does not depend on the volume, the API bill grows "
               "with it. Find the volume where they are equal, remembering what unit the API price is quoted in.",
          rtol=0.01,
          slips={"using one hour of rent instead of a month's (730 hours)": 1 / HOURS_PER_MONTH,
                 "answering in millions of tokens where tokens are asked": 1e-6,
                 "using a 30-day month (720 h) where the course uses 730 h (365 x 24 / 12)": 720 / HOURS_PER_MONTH})
def _expected_break_even(usd_per_hour: float, api_usd_per_1m: float) -> float:
    return break_even_tokens_per_month(usd_per_hour * HOURS_PER_MONTH, api_usd_per_1m)


def _payback_with(purchase_usd: float, monthly_api_usd: float, electricity: float) -> float:
    saving = monthly_api_usd - electricity
    return purchase_usd / saving if saving > 0 else math.inf


@exercise("08.payback_months",
          hint="What does owning the card save each month, once its own running cost is paid? The price of the card "
               "divided by that saving counts the months. Mind the units of the power (watts) and the tariff (kWh).",
          rtol=0.01,
          slips={"leaving out the electricity": lambda expected, purchase_usd, monthly_api_usd, **_:
                 purchase_usd / monthly_api_usd,
                 "adding the electricity to the saving instead of subtracting it":
                 lambda expected, purchase_usd, monthly_api_usd, power_w, busy_hours, usd_per_kwh:
                 purchase_usd / (monthly_api_usd + power_w / 1000 * busy_hours * usd_per_kwh),
                 "using watts where the tariff is per kilowatt-hour (1,000x the electricity)":
                 lambda expected, purchase_usd, monthly_api_usd, power_w, busy_hours, usd_per_kwh:
                 _payback_with(purchase_usd, monthly_api_usd, power_w * busy_hours * usd_per_kwh),
                 "answering in years where months are asked": 1 / 12})
def _expected_payback(purchase_usd: float, monthly_api_usd: float, power_w: float, busy_hours: float,
                      usd_per_kwh: float) -> float:
    return payback_months(purchase_usd, monthly_api_usd, electricity_usd_per_month(power_w, busy_hours, usd_per_kwh))
