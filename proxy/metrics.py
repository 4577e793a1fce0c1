"""Prometheus metrics (names and labels are part of the public contract).

With several worker processes, prometheus-client's multiprocess mode keeps one
file of values per process in ``PROMETHEUS_MULTIPROC_DIR`` and a scrape of any
worker merges them, so every scrape is coherent. ``serve`` sets that directory
before this module is first imported (prometheus-client picks its storage at
import). Label values are bounded: clients are the operator's, and a model the
catalog does not know is labelled ``other``.
"""

from __future__ import annotations

import os
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

from taximeter.pricing.catalog import Catalog
from taximeter.store import budgets
from taximeter.store.models import BudgetEvent, BudgetState, UsageEvent

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


class Metrics:
    """Every metric of spec section 9, in one registry."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # In multiprocess mode metrics live in files, not in a registry object.
        # (prometheus-client registers nothing when registry is None.)
        registry = None if self.multiprocess else CollectorRegistry()
        self.registry = registry
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
        self.rejections = Counter(
            "taximeter_rejections", "Calls refused.", ["client", "reason"], registry=registry
        )
        self.alerts = Counter(
            "taximeter_alerts",
            "Budget alert thresholds crossed.",
            ["client", "threshold", "metric"],
            registry=registry,
        )
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
        self.ledger_pending = Gauge(
            "taximeter_ledger_pending_events",
            "Events recorded in memory, not yet durable in the store.",
            multiprocess_mode="livesum",
            registry=registry,
        )

    def model(self, name: str) -> str:
        price = self._catalog.resolve(name)
        return price.model if price is not None else "other"

    def call(self, event: UsageEvent) -> None:
        """A settled call: its request, tokens and cost."""
        model = self.model(event.model)
        self.requests.labels(event.client_id, event.api_type, model, str(event.status)).inc()
        for kind, count in (
            ("input", event.input_tokens),
            ("output", event.output_tokens),
            ("cached", event.cached_tokens),
            ("reasoning", event.reasoning_tokens),
        ):
            if count:
                self.tokens.labels(event.client_id, event.api_type, model, kind).inc(count)
        if event.cost:
            # Prometheus counts in floats; the ledger, not this, is the record of money.
            self.cost.labels(event.client_id, event.currency).inc(float(event.cost))

    def budget(self, state: BudgetState) -> None:
        tokens_pct, cost_pct = budgets.percents(state)
        for metric, percent in (("tokens", tokens_pct), ("cost", cost_pct)):
            if percent is not None:
                self.budget_used_ratio.labels(state.client_id, metric).set(percent / 100)
        self.budget_paused.labels(state.client_id).set(1 if state.paused else 0)

    def budget_event(self, event: BudgetEvent) -> None:
        if event.kind == "threshold" and event.threshold is not None:
            threshold = format(Decimal(event.threshold).normalize(), "f")
            self.alerts.labels(event.client_id, threshold, event.metric or "").inc()

    def rejection(self, client_id: str, reason: str) -> None:
        self.rejections.labels(client_id, reason).inc()

    def render(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))
        assert self.registry is not None
        return bytes(generate_latest(self.registry))
