"""The Grafana dashboard and provisioning, linted without a Grafana server.

Every panel has a title, a description, a unit, the datasource variable and a query whose metrics
exist in what the exporters export (checked against a real exposition of a sim run). The data side
(every query returns data from a real Prometheus) is in test_prometheus.py.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml
from prometheus_client.exposition import generate_latest

from ats_stress.cluster.results.metrics import DeviceExporter, SmmuExporter, run_labels
from ats_stress.cluster.runtime.sim import run_sim
from helpers import scenario

ROOT = Path(__file__).resolve().parent.parent
DASH = ROOT / "grafana/dashboards/ats-stress.json"
GRAFANA_UNITS = {"s", "ms", "none", "short", "ops", "reqps", "percentunit"}
PROMQL_WORDS = {"sum", "max", "min", "by", "rate", "increase", "histogram_quantile", "count", "le", "class",
                "without", "offset", "avg", "bool"}


def dashboard() -> dict:
    return json.loads(DASH.read_text())


def exported_names() -> set[str]:
    """Every sample name the exporters produce, scraped all through a small run with a hang and a fence."""
    names: set[str] = set()
    sc = scenario(duration=6, policy={"name": "fence-on-timeout", "culprit_search": "per-device-batches"},
                  hardware={"atc_inv_completion_timeout": 60, "command_queues": 4},
                  chaos=[{"at": 1, "fault": "hang", "endpoints": [5], "duration": 4}])

    def scrape(t, w):
        exporters = [SmmuExporter(w.nodes[0], w.oracles[0], run_labels("r", sc, smmu="0")),
                     DeviceExporter(w.groups[0], run_labels("r", sc, group="0"))]
        for e in exporters:
            e.set_time(t)
            for line in generate_latest(e.registry).decode().splitlines():
                if line and not line.startswith("#"):
                    names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))

    run_sim(sc, sample=scrape)
    return names


def panels(d: dict) -> list[dict]:
    return [p for p in d["panels"] if p["type"] != "row"]


def test_dashboard_is_what_the_generator_builds():
    sys.path.insert(0, str(ROOT / "grafana"))
    import make_dashboard

    assert DASH.read_text() == make_dashboard.render(), "run: python grafana/make_dashboard.py"


def test_dashboard_schema_variables_rows_and_annotations():
    d = dashboard()
    assert d["schemaVersion"] >= 39
    assert d["uid"] and d["title"]
    names = {v["name"]: v for v in d["templating"]["list"]}
    assert set(names) >= {"datasource", "run", "smmu"}
    assert names["datasource"]["type"] == "datasource" and names["datasource"]["query"] == "prometheus"
    assert "ats_run_info" in names["run"]["definition"]
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    for word in ("Overview", "Command queue", "Unmap latency", "Recovery", "Endpoints"):
        assert any(word in r for r in rows), f"no row for {word}: {rows}"
    ann = [a for a in d["annotations"]["list"] if a.get("expr")]
    assert any("ats_chaos_step_endpoints" in a["expr"] for a in ann), "chaos steps are not annotations"
    assert {p["type"] for p in panels(d)} >= {"stat", "timeseries", "heatmap"}
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))


def test_every_panel_has_title_unit_description_datasource_and_existing_metrics():
    d = dashboard()
    exported = exported_names()
    problems = []
    for p in panels(d):
        where = f"panel {p.get('title')!r}"
        if not p.get("title"):
            problems.append(f"{where}: no title")
        if not p.get("description"):
            problems.append(f"{where}: no description")
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if unit not in GRAFANA_UNITS:
            problems.append(f"{where}: unit {unit!r}")
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{where}: datasource is not the $datasource variable")
        if not p.get("targets"):
            problems.append(f"{where}: no query")
        for t in p.get("targets", []):
            if t.get("datasource", {}).get("uid") != "${datasource}":
                problems.append(f"{where}: target {t['refId']} datasource")
            metrics = set(re.findall(r"\b(ats_[a-z0-9_]+)", t["expr"]))
            if not metrics:
                problems.append(f"{where}: query names no ats_ metric: {t['expr']}")
            for m in metrics - exported:
                problems.append(f"{where}: {m} is not exported")
            if "$run" not in t["expr"]:
                problems.append(f"{where}: query ignores $run")
    for a in d["annotations"]["list"]:
        if a.get("expr"):
            for m in set(re.findall(r"\b(ats_[a-z0-9_]+)", a["expr"])) - exported:
                problems.append(f"annotation {a['name']}: {m} is not exported")
    assert not problems, "\n".join(problems)


def test_smmu_side_panels_honour_the_smmu_variable():
    for p in panels(dashboard()):
        for t in p["targets"]:
            if "ats_endpoints" in t["expr"] or "ats_chaos" in t["expr"] or "ats_inv_" in t["expr"] \
                    or "ats_dma_" in t["expr"]:
                continue  # endpoint-side metrics carry no smmu label
            assert '$smmu' in t["expr"], f"{p['title']}: {t['expr']}"


def test_dashboard_covers_every_metric_the_issue_asks_for():
    exprs = " ".join(t["expr"] for p in panels(dashboard()) for t in p["targets"])
    for m in ("ats_commands_total", "ats_cmdq_depth", "ats_cmd_sync_duration_seconds_bucket",
              "ats_unmap_duration_seconds_bucket", "ats_sync_timeouts_total", "ats_cmdq_errors_total",
              "ats_hw_atc_inv_timeouts_total", "ats_fences_total", "ats_fenced_streams",
              "ats_fence_latency_seconds_bucket", "ats_recovery_duration_seconds_bucket", "ats_fenced_healthy_total",
              "ats_translated_requests_total", "ats_uaf_exposures_total", "ats_cpu_lockup_seconds_total",
              "ats_endpoints", "ats_chaos_step_endpoints", "ats_run_info"):
        assert m in exprs, f"no panel shows {m}"


def test_provisioning_files_point_at_the_dashboards_and_a_prometheus():
    ds = yaml.safe_load((ROOT / "grafana/provisioning/datasources/ats-stress.yaml").read_text())
    assert ds["apiVersion"] == 1
    (src,) = ds["datasources"]
    assert src["type"] == "prometheus" and src["url"].startswith("http")
    prov = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/ats-stress.yaml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    # the documented mount: grafana/ -> /etc/ats-stress/grafana
    assert provider["options"]["path"] == "/etc/ats-stress/grafana/dashboards"
    assert list((ROOT / "grafana/dashboards").glob("*.json")) == [DASH]
