"""Prometheus metrics (names and labels are part of the public contract).

With several worker processes, prometheus-client's multiprocess mode keeps one
file of values per process in ``PROMETHEUS_MULTIPROC_DIR`` and a scrape of any
worker merges them, so every scrape is coherent. ``serve`` sets that directory
before this module is first imported (prometheus-client picks its storage at
import). Label values are bounded: clients are the operator's, and a model the
catalog does not know is labelled ``other``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from taximeter.pricing import budgets
from taximeter.pricing.catalog import Catalog
from taximeter.pricing.models import BudgetAlert, BudgetState, UsageEvent
from taximeter.proxy.errors import BudgetExceeded, LimitReached, ModelNotAllowed, ModelNotPriced

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)


_TOKEN_KINDS = ("input", "output", "cached", "reasoning")
_SERIES_MAX = 10_000


@dataclass(frozen=True, slots=True)
class _CallSeries:
    """The children one kind of call counts in."""

    requests: Counter
    tokens: tuple[Counter, ...]  # in the order of _TOKEN_KINDS
    cost: Counter


class Metrics:
    """Every metric of spec section 9, in one registry."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # In multiprocess mode metrics live in files, not in a registry object.
        # (prometheus-client registers nothing when registry is None.)
        registry = None if self.multiprocess else CollectorRegistry()
        self.registry = registry
        # Family by family, in the order /metrics has always listed them.
        self._add_call_metrics(registry)
        self._add_budget_metrics(registry)
        self._add_latency_metrics(registry)
        self._add_ledger_metrics(registry)
        # Labelled children, looked up once per label set rather than on every
        # call (``labels()`` validates and hashes its arguments each time).
        self._calls: dict[tuple[str, str, str, int, str], _CallSeries] = {}
        self._budgets: dict[str, tuple[Gauge, Gauge, Gauge]] = {}
        self._limits: dict[tuple[str, str], Gauge] = {}  # (client, limit) -> its labelled gauge

    def _add_call_metrics(self, registry: CollectorRegistry | None) -> None:
        """What the calls were: requests, tokens and cost."""
        self.requests = Counter(
            "taximeter_requests",
            "Proxied calls.",
            ["client", "api_type", "model", "status"],
            registry=registry,
        )
        self.tokens = Counter(
            "taximeter_tokens", "Tokens metered.", ["client", "api_type", "model", "kind"], registry=registry
        )
        self.cost = Counter(
            "taximeter_cost",
            "Cost metered, in the budget currency.",
            ["client", "currency"],
            registry=registry,
        )

    def _add_budget_metrics(self, registry: CollectorRegistry | None) -> None:
        """Where each budget stands, the calls refused, the alert thresholds crossed."""
        self.budget_used_ratio = Gauge(
            "taximeter_budget_used_ratio",
            "Share of a budget limit used this period (1.0 = at the limit).",
            ["client", "metric"],
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self.budget_paused = Gauge(
            "taximeter_budget_paused",
            "1 while a budget is paused.",
            ["client"],
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self.limit_used_ratio = Gauge(
            "taximeter_limit_used_ratio",
            "Share of a per-client limit used in its window (1.0 = at the limit).",
            ["client", "limit"],
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self.rejections = Counter(
            "taximeter_rejections", "Calls refused.", ["client", "reason"], registry=registry
        )
        self.alerts = Counter(
            "taximeter_alerts",
            "Budget alert thresholds crossed.",
            ["client", "threshold", "metric"],
            registry=registry,
        )

    def _add_latency_metrics(self, registry: CollectorRegistry | None) -> None:
        """Where a call's time went: upstream, or taximeter itself."""
        self.upstream_seconds = Histogram(
            "taximeter_upstream_seconds",
            "Time spent in the upstream call.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.overhead_seconds = Histogram(
            "taximeter_overhead_seconds",
            "Time a call spent in taximeter itself (total minus upstream).",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )

    def _add_ledger_metrics(self, registry: CollectorRegistry | None) -> None:
        """Events not yet durable, and those the store refused."""
        self.ledger_pending = Gauge(
            "taximeter_ledger_pending_events",
            "Events recorded in memory, not yet durable in the store.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.ledger_quarantined = Counter(
            "taximeter_ledger_quarantined_events",
            "Usage events the store refused to record: kept in quarantined_events, counted in no budget.",
            registry=registry,
        )

    def model(self, name: str) -> str:
        """A model label: a name some catalog prices, else ``other`` (a client
        cannot grow the series without bound)."""
        return self._catalog.canonical(name) or "other"

    def call(self, event: UsageEvent) -> None:
        """A settled call: its request, tokens and cost."""
        key = (event.client_id, event.api_type, event.model, event.status, event.currency)
        series = self._calls.get(key)
        if series is None:
            series = self._calls[key] = self._call_series(*key)
        series.requests.inc()
        for child, count in zip(
            series.tokens,
            (event.input_tokens, event.output_tokens, event.cached_tokens, event.reasoning_tokens),
            strict=True,
        ):
            if count:
                child.inc(count)
        if event.cost:
            # Prometheus counts in floats; the ledger, not this, is the record of money.
            series.cost.inc(float(event.cost))

    def _call_series(self, client: str, api_type: str, model: str, status: int, currency: str) -> _CallSeries:
        if len(self._calls) >= _SERIES_MAX:
            self._calls.clear()  # bounded: an unusual spread of labels just starts over
        label = self.model(model)
        return _CallSeries(
            requests=self.requests.labels(client, api_type, label, str(status)),
            tokens=tuple(self.tokens.labels(client, api_type, label, kind) for kind in _TOKEN_KINDS),
            cost=self.cost.labels(client, currency),
        )

    def budget(self, state: BudgetState) -> None:
        children = self._budgets.get(state.client_id)
        if children is None:
            if len(self._budgets) >= _SERIES_MAX:
                self._budgets.clear()
            client = state.client_id
            children = self._budgets[client] = (
                self.budget_used_ratio.labels(client, "tokens"),
                self.budget_used_ratio.labels(client, "cost"),
                self.budget_paused.labels(client),
            )
        tokens_ratio, cost_ratio, paused = children
        tokens_pct, cost_pct = budgets.percents(state)
        if tokens_pct is not None:
            tokens_ratio.set(tokens_pct / 100)
        if cost_pct is not None:
            cost_ratio.set(cost_pct / 100)
        paused.set(1 if state.paused else 0)

    def drop_budget(self, client_id: str) -> None:
        """A budget deleted: its series go (with several workers, whose
        series live in files, they read 0: nothing used, nothing paused)."""
        children = self._budgets.pop(client_id, None)
        if self.multiprocess:
            for child in children or ():
                child.set(0)
            return
        for metric in ("tokens", "cost"):
            with contextlib.suppress(KeyError):
                self.budget_used_ratio.remove(client_id, metric)
        with contextlib.suppress(KeyError):
            self.budget_paused.remove(client_id)

    def budgets_shown(self) -> set[str]:
        """The clients whose budget gauges this process shows."""
        return set(self._budgets)

    def budget_alert(self, event: BudgetAlert) -> None:
        if event.kind == "threshold" and event.threshold is not None:
            threshold = format(Decimal(event.threshold).normalize(), "f")
            self.alerts.labels(event.client_id, threshold, event.metric or "").inc()

    def limit_used(self, client_id: str, limit: str, ratio: float) -> None:
        child = self._limits.get((client_id, limit))
        if child is None:  # looked up once: labels() is the dear part, on every settled call
            if len(self._limits) >= _SERIES_MAX:
                self._limits.clear()
            child = self._limits[(client_id, limit)] = self.limit_used_ratio.labels(client_id, limit)
        child.set(ratio)

    def limit_alert(self, client_id: str, limit: str, threshold: str) -> None:
        self.alerts.labels(client_id, threshold, f"limit:{limit}").inc()

    def rejection(self, client_id: str, reason: str) -> None:
        self.rejections.labels(client_id, reason).inc()

    @contextlib.contextmanager
    def refusals(self, client_id: str) -> Iterator[None]:
        """Count a call the block refuses (a spent budget or limit by its
        reason, an unpriced or forbidden model by its code), then let it go on."""
        try:
            yield
        except (BudgetExceeded, LimitReached) as exc:
            self.rejection(client_id, exc.reason)
            raise
        except (ModelNotPriced, ModelNotAllowed) as exc:
            self.rejection(client_id, exc.code)
            raise

    def render(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))
        assert self.registry is not None
        return bytes(generate_latest(self.registry))
