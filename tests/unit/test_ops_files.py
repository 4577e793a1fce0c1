"""The ops files: Prometheus config and alert rules (promtool), the Grafana
dashboard on the real metric names, Dockerfile and docker-compose.yml in step
with the settings."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from taximeter.proxy.settings import Settings
from tests.support.availability import unavailable

ROOT = Path(__file__).resolve().parents[2]
METRICS = {
    "taximeter_requests_total",
    "taximeter_tokens_total",
    "taximeter_cost_total",
    "taximeter_budget_used_ratio",
    "taximeter_budget_paused",
    "taximeter_rejections_total",
    "taximeter_alerts_total",
    "taximeter_limit_used_ratio",
    "taximeter_upstream_seconds",
    "taximeter_overhead_seconds",
    "taximeter_ledger_pending_events",
}


def metric_names(text: str) -> set[str]:
    return {re.sub(r"_(bucket|count|sum)$", "", m) for m in re.findall(r"taximeter_[a-z_]+", text)}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        unavailable("promtool is not installed", ".ci/run installs Debian's prometheus package")
    return path


@pytest.mark.slow  # runs promtool
def test_promtool_accepts_the_alert_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(ROOT / "config" / "alerts.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_alert_rules_cover_the_issue_and_use_real_metrics() -> None:
    rules = yaml.safe_load((ROOT / "config" / "alerts.yml").read_text())["groups"][0]["rules"]
    exprs = " ".join(r["expr"] for r in rules)
    assert metric_names(exprs) <= METRICS
    assert "taximeter_budget_used_ratio) >= 0.9" in exprs and "taximeter_budget_paused" in exprs
    assert "taximeter_limit_used_ratio) >= 0.9" in exprs
    # Failures upstream, not clients that hang up (499): those are not the upstream's.
    assert "taximeter_ledger_pending_events" in exprs and 'status=~"5.."' in exprs and "499" not in exprs


def test_prometheus_scrapes_the_proxy() -> None:
    config = yaml.safe_load((ROOT / "config" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["taximeter:8787"]
    assert job["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/run/secrets/taximeter_metrics_token",
    }


def test_compose_guards_metrics_with_a_token_prometheus_sends() -> None:
    """The proxy's port is published: /metrics (client ids and spend) must ask for the
    token, Prometheus must send the same one, and Prometheus itself stays on loopback."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    # `:?` makes `docker compose up` refuse to start without it, never open.
    assert services["taximeter"]["environment"]["TAXIMETER_METRICS_TOKEN"].startswith(
        "${TAXIMETER_METRICS_TOKEN:?"
    )
    assert compose["secrets"]["taximeter_metrics_token"] == {"environment": "TAXIMETER_METRICS_TOKEN"}
    assert services["prometheus"]["secrets"] == ["taximeter_metrics_token"]  # /run/secrets/<name>
    assert all(port.startswith("127.0.0.1:") for port in services["prometheus"]["ports"])


def test_grafana_dashboard_charts_real_metrics() -> None:
    dashboard = json.loads((ROOT / "config" / "grafana" / "taximeter-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    assert metric_names(exprs) == METRICS


def test_compose_file_runs_the_stack_with_real_setting_names() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "taximeter", "prometheus"}
    proxy = services["taximeter"]
    env = proxy["environment"]
    known = {f"TAXIMETER_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known, set(env) - known
    assert env["TAXIMETER_DATABASE_URL"].startswith("postgresql://") and env[
        "TAXIMETER_REDIS_URL"
    ].startswith("redis://")
    assert proxy["command"][:2] == ["taximeter", "serve"]
    assert "8787:8787" in proxy["ports"]
    assert proxy["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert all("healthcheck" in services[name] for name in ("postgres", "redis"))
    assert all(s["restart"] == "unless-stopped" for s in services.values())
    # Longer than the proxy's drain: calls in flight (30 s), then the ledger's last events.
    drain_s = 30 + Settings.model_fields["ledger_drain_s"].default
    assert int(proxy["stop_grace_period"].removesuffix("s")) > drain_s
    mounts = " ".join(services["prometheus"]["volumes"])
    assert (
        "config/prometheus.yml" in mounts
        and "config/alerts.yml:/etc/prometheus/taximeter-alerts.yml" in mounts
    )


def test_dockerfile_is_slim_non_root_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]-slim", dockerfile, re.M)
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    assert 'CMD ["taximeter", "serve"' in dockerfile and "TAXIMETER_HOST=0.0.0.0" in dockerfile
