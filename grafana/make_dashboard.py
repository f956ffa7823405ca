"""Builds grafana/dashboards/ats-stress.json (run it after changing a panel; a test checks the
committed JSON is what this produces): ``python grafana/make_dashboard.py``.

One place for every panel: title, description, unit and PromQL. Variables: ``datasource``,
``run`` and ``smmu`` (both multi-value with All); SMMU-side queries select
``{run=~"$run", smmu=~"$smmu"}``, endpoint-side queries ``{run=~"$run"}``.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "ats-stress.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
S = 'run=~"$run", smmu=~"$smmu"'  # SMMU-side selector
E = 'run=~"$run"'  # endpoint-side selector
RI = "$__rate_interval"

# (row title, [panels]); a panel: dict(title, type, unit, desc, targets=[(expr, legend)], w, h, extra)
ROWS: list[tuple[str, list[dict]]] = [
    ("Overview: UAF, fences, stall", [
        dict(title="UAF exposures", type="stat", unit="none", w=4, h=5, thresholds=[0, 1],
             desc="Translated requests that reached memory after the unmap they depend on was reported "
                  "complete (the safety property is zero). Red: at least one.",
             targets=[(f"sum(ats_uaf_exposures_total{{{S}}})", "UAF exposures")]),
        dict(title="Streams fenced now", type="stat", unit="none", w=4, h=5, thresholds=[0, 1],
             desc="Streams whose STE currently blocks translated requests (fenced by the recovery policy).",
             targets=[(f"sum(ats_fenced_streams{{{S}}})", "fenced")]),
        dict(title="Oldest pending CMD_SYNC", type="stat", unit="s", w=4, h=5, thresholds=[0, 1, 5],
             desc="How long the oldest CMD_SYNC not yet retired has waited: a wedged command queue.",
             targets=[(f"max(ats_cmd_sync_oldest_pending_seconds{{{S}}})", "oldest CMD_SYNC")]),
        dict(title="Healthy devices fenced", type="stat", unit="none", w=4, h=5, thresholds=[0, 1],
             desc="Fences of a stream whose device had no fault: culprit-search mistakes.",
             targets=[(f"sum(ats_fenced_healthy_total{{{S}}})", "healthy fenced")]),
        dict(title="Scenario time", type="stat", unit="s", w=4, h=5,
             desc="Scenario seconds the SMMU exporters have reached (ray runtime: wall time / time_scale).",
             targets=[(f"max(ats_scenario_time_seconds{{{S}}})", "scenario time")]),
        dict(title="Run", type="table", unit="none", w=4, h=5, instant=True,
             desc="The run's identity: run id, scenario, policy, SMMU, its CPUs, command queues and streams.",
             targets=[(f"ats_run_info{{{S}}}", "")]),
        dict(title="Healthy unmap stall (oldest open unmap)", type="timeseries", unit="s", w=12, h=8,
             desc="Age of the oldest unmap not yet reported complete, healthy domains: how long healthy "
                  "devices' unmaps are stalled behind a bad device right now.",
             targets=[(f'max by (smmu) (ats_unmap_oldest_open_seconds{{{S}, class="healthy"}})', "smmu {{smmu}}")]),
        dict(title="UAF exposures over time", type="timeseries", unit="none", w=12, h=8,
             desc="Cumulative UAF exposures, and those to a page already reallocated to another mapping.",
             targets=[(f"sum by (smmu) (ats_uaf_exposures_total{{{S}}})", "UAF smmu {{smmu}}"),
                      (f"sum by (smmu) (ats_uaf_reallocated_total{{{S}}})", "reallocated smmu {{smmu}}")]),
    ]),
    ("Command queue", [
        dict(title="Commands by opcode", type="timeseries", unit="ops", w=8, h=8,
             desc="Commands submitted to the command queues per second, by opcode (ATC_INV, CMD_SYNC, CFGI_STE, TLBI_*).",
             targets=[(f"sum by (opcode) (rate(ats_commands_total{{{S}}}[{RI}]))", "{{opcode}}")]),
        dict(title="Command queue depth", type="timeseries", unit="none", w=8, h=8,
             desc="Commands queued and not yet consumed (PROD - CONS) over all queues of each SMMU, and in its deepest queue.",
             targets=[(f"sum by (smmu) (ats_cmdq_depth{{{S}}})", "all queues smmu {{smmu}}"),
                      (f"max by (smmu) (ats_cmdq_depth_max{{{S}}})", "deepest queue smmu {{smmu}}")]),
        dict(title="Oldest pending CMD_SYNC age", type="timeseries", unit="s", w=8, h=8,
             desc="Age of the oldest CMD_SYNC not yet retired per SMMU. It climbs while a queue is wedged by a "
                  "device that does not answer, until the device answers, is reset, or the hardware gives up (60 s).",
             targets=[(f"max by (smmu) (ats_cmd_sync_oldest_pending_seconds{{{S}}})", "smmu {{smmu}}")]),
        dict(title="CMD_SYNC duration (heatmap)", type="heatmap", unit="s", w=8, h=8,
             desc="CMD_SYNC duration from submission to retirement, per bucket (1 us to 120 s).",
             targets=[(f"sum by (le) (increase(ats_cmd_sync_duration_seconds_bucket{{{S}}}[{RI}]))", "{{le}}")]),
        dict(title="CMD_SYNC duration quantiles", type="timeseries", unit="s", w=8, h=8,
             desc="p50 / p99 / max-bucket of CMD_SYNC duration over the rate window.",
             targets=[(f"histogram_quantile(0.5, sum by (le) (rate(ats_cmd_sync_duration_seconds_bucket{{{S}}}[{RI}])))", "p50"),
                      (f"histogram_quantile(0.99, sum by (le) (rate(ats_cmd_sync_duration_seconds_bucket{{{S}}}[{RI}])))", "p99")]),
        dict(title="Timeouts: software sync, hardware ATC_INV, CERROR_ATC_INV_SYNC", type="timeseries", unit="none",
             w=8, h=8, bars=True,
             desc="Per rate window: software CMD_SYNC timeouts (the driver gave up waiting), invalidations given "
                  "up by the hardware completion timeout, and GERROR.CMDQ_ERR with CERROR_ATC_INV_SYNC.",
             targets=[(f"sum(increase(ats_sync_timeouts_total{{{S}}}[{RI}]))", "software sync timeouts"),
                      (f"sum(increase(ats_hw_atc_inv_timeouts_total{{{S}}}[{RI}]))", "hardware ATC_INV timeouts"),
                      (f'sum(increase(ats_cmdq_errors_total{{{S}, cerror="CERROR_ATC_INV_SYNC"}}[{RI}]))', "CERROR_ATC_INV_SYNC")]),
        dict(title="Halted command queues", type="timeseries", unit="none", w=8, h=6,
             desc="Command queues halted with CMDQ_CONS.ERR set, waiting for the driver's GERRORN acknowledgement.",
             targets=[(f"sum by (smmu) (ats_cmdq_halted_queues{{{S}}})", "smmu {{smmu}}")]),
        dict(title="Timeouts so far", type="stat", unit="none", w=8, h=6,
             desc="Totals for the run: software sync timeouts, hardware ATC_INV timeouts and CERROR_ATC_INV_SYNC.",
             targets=[(f"sum(ats_sync_timeouts_total{{{S}}})", "software"),
                      (f"sum(ats_hw_atc_inv_timeouts_total{{{S}}})", "hardware"),
                      (f"sum(ats_cmdq_errors_total{{{S}}})", "CERROR_ATC_INV_SYNC")]),
        dict(title="SMMU event records", type="timeseries", unit="ops", w=8, h=6,
             desc="Event queue records per second by event (F_TRANSL_FORBIDDEN when a fenced device keeps issuing translated requests).",
             targets=[(f"sum by (event) (rate(ats_smmu_events_total{{{S}}}[{RI}]))", "{{event}}")]),
    ]),
    ("Unmap latency", [
        dict(title="Unmap duration, healthy domains (heatmap)", type="heatmap", unit="s", w=12, h=8,
             desc="Software-visible unmap duration (arrival to reported complete) in domains no chaos step touches.",
             targets=[(f'sum by (le) (increase(ats_unmap_duration_seconds_bucket{{{S}, class="healthy"}}[{RI}]))', "{{le}}")]),
        dict(title="Unmap duration, affected domains (heatmap)", type="heatmap", unit="s", w=12, h=8,
             desc="Software-visible unmap duration in domains with a chaos-targeted device.",
             targets=[(f'sum by (le) (increase(ats_unmap_duration_seconds_bucket{{{S}, class="affected"}}[{RI}]))', "{{le}}")]),
        dict(title="Unmap duration quantiles", type="timeseries", unit="s", w=12, h=8,
             desc="p50 and p99 unmap duration per class (healthy / affected domains) over the rate window.",
             targets=[(f"histogram_quantile(0.5, sum by (le, class) (rate(ats_unmap_duration_seconds_bucket{{{S}}}[{RI}])))", "p50 {{class}}"),
                      (f"histogram_quantile(0.99, sum by (le, class) (rate(ats_unmap_duration_seconds_bucket{{{S}}}[{RI}])))", "p99 {{class}}")]),
        dict(title="Unmaps completed and open", type="timeseries", unit="ops", w=12, h=8,
             desc="Unmaps reported complete per second by class, and arrivals per second.",
             targets=[(f"sum by (class) (rate(ats_unmap_duration_seconds_count{{{S}}}[{RI}]))", "completed {{class}}"),
                      (f"sum(rate(ats_unmaps_arrived_total{{{S}}}[{RI}]))", "arrived")]),
        dict(title="Open unmaps", type="timeseries", unit="none", w=12, h=6,
             desc="Unmaps not yet reported complete (in flight, or waiting for their CPU behind a stuck one).",
             targets=[(f"sum by (class) (ats_unmaps_open{{{S}}})", "{{class}}")]),
        dict(title="CPU lockup", type="timeseries", unit="s", w=12, h=6,
             desc="CPU-seconds spent spinning with interrupts off (VT-d qi_submit_sync, AMD wait_on_sem), cumulative.",
             targets=[(f"sum by (smmu) (ats_cpu_lockup_seconds_total{{{S}}})", "smmu {{smmu}}")]),
    ]),
    ("Recovery", [
        dict(title="Fences and unfences", type="timeseries", unit="none", w=8, h=8,
             desc="Cumulative fences (blocking STE in effect) and unfences (STE restored after a successful reset).",
             targets=[(f"sum(ats_fences_total{{{S}}})", "fences"), (f"sum(ats_unfences_total{{{S}}})", "unfences")]),
        dict(title="Currently fenced streams", type="timeseries", unit="none", w=8, h=8,
             desc="Streams whose STE blocks translated requests right now, per SMMU.",
             targets=[(f"sum by (smmu) (ats_fenced_streams{{{S}}})", "smmu {{smmu}}")]),
        dict(title="Healthy devices fenced", type="timeseries", unit="none", w=8, h=8,
             desc="Cumulative fences of devices that had no fault (culprit mistakes); should stay 0.",
             targets=[(f"sum(ats_fenced_healthy_total{{{S}}})", "healthy fenced")]),
        dict(title="Fence latency", type="timeseries", unit="s", w=8, h=8,
             desc="From the device's fault start to its blocking STE in effect: median and max bucket over the run, and the mean.",
             targets=[(f"histogram_quantile(0.5, sum by (le) (ats_fence_latency_seconds_bucket{{{S}}}))", "p50"),
                      (f"histogram_quantile(1, sum by (le) (ats_fence_latency_seconds_bucket{{{S}}}))", "max (bucket bound)"),
                      (f"sum(ats_fence_latency_seconds_sum{{{S}}}) / sum(ats_fence_latency_seconds_count{{{S}}})", "mean")]),
        dict(title="Recovery duration (reset to unfence)", type="timeseries", unit="s", w=8, h=8,
             desc="From the successful reset's start to the unfence: median and max bucket over the run, and the mean.",
             targets=[(f"histogram_quantile(0.5, sum by (le) (ats_recovery_duration_seconds_bucket{{{S}}}))", "p50"),
                      (f"histogram_quantile(1, sum by (le) (ats_recovery_duration_seconds_bucket{{{S}}}))", "max (bucket bound)"),
                      (f"sum(ats_recovery_duration_seconds_sum{{{S}}}) / sum(ats_recovery_duration_seconds_count{{{S}}})", "mean")]),
        dict(title="Device resets by outcome", type="timeseries", unit="none", w=8, h=8,
             desc="Cumulative FLRs finished, ok or failed (a failed reset keeps the stream fenced).",
             targets=[(f"sum by (outcome) (ats_resets_total{{{S}}})", "{{outcome}}")]),
        dict(title="Translated requests by outcome", type="timeseries", unit="reqps", w=24, h=8,
             desc="Translated requests per second: allowed (reached memory legitimately), uaf (reached memory after "
                  "their unmap was reported complete) and blocked (by a fenced STE).",
             targets=[(f"sum by (outcome) (rate(ats_translated_requests_total{{{S}}}[{RI}]))", "{{outcome}}")]),
    ]),
    ("Endpoints and chaos", [
        dict(title="Endpoints by state", type="timeseries", unit="none", w=8, h=8, stack=True,
             desc="Endpoints in each state (healthy, slow, hang, flap, drop, lie, itag_leak, removed, resetting, dead).",
             targets=[(f"sum by (state) (ats_endpoints{{{E}}})", "{{state}}")]),
        dict(title="Endpoints not healthy", type="timeseries", unit="none", w=8, h=8, stack=True,
             desc="The same without the healthy majority: who is misbehaving right now.",
             targets=[(f'sum by (state) (ats_endpoints{{{E}, state!="healthy"}})', "{{state}}")]),
        dict(title="Chaos steps active", type="timeseries", unit="none", w=8, h=8,
             desc="Endpoints under each active chaos step (series exist only while the step is active); the "
                  "dashboard annotations mark the same steps on every panel.",
             targets=[(f"sum by (step, fault) (ats_chaos_step_endpoints{{{E}}})", "step {{step}} {{fault}}")]),
        dict(title="Invalidate Requests at the endpoints", type="timeseries", unit="reqps", w=12, h=8,
             desc="Invalidate Requests per second by outcome at the endpoints: answered, lost (drop, itag_leak), "
                  "ignored (removed, dead, in reset).",
             targets=[(f"sum by (outcome) (rate(ats_inv_requests_total{{{E}}}[{RI}]))", "{{outcome}}")]),
        dict(title="DMA requests", type="timeseries", unit="reqps", w=12, h=8,
             desc="Endpoint DMA per second: translated requests (ATC hit) and Translation Requests (ATC miss).",
             targets=[(f"sum by (kind) (rate(ats_dma_requests_total{{{E}}}[{RI}]))", "{{kind}}")]),
    ]),
]

ANNOTATIONS = [
    dict(name="Chaos steps", color="rgba(255, 96, 96, 0.25)",
         expr=f"sum by (step, fault) (ats_chaos_step_endpoints{{{E}}}) > 0",
         title="chaos step {{step}}: {{fault}}", tags="fault"),
    dict(name="Fenced streams", color="rgba(138, 43, 226, 0.25)",
         expr=f"sum by (smmu) (ats_fenced_streams{{{S}}}) > 0",
         title="streams fenced on smmu {{smmu}}", tags="smmu"),
]


def _thresholds(steps: list[float] | None) -> dict:
    colors = ["green", "red", "dark-red"]
    if not steps:
        return {"mode": "absolute", "steps": [{"color": "green", "value": None}]}
    out = [{"color": colors[0], "value": None}]
    for i, v in enumerate(steps[1:], 1):
        out.append({"color": colors[min(i, len(colors) - 1)], "value": v})
    return {"mode": "absolute", "steps": out}


def _panel(pid: int, p: dict, x: int, y: int) -> dict:
    targets = []
    for i, (expr, legend) in enumerate(p["targets"]):
        t = {"datasource": DS, "refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
             "range": not p.get("instant"), "instant": bool(p.get("instant"))}
        if p["type"] == "heatmap":
            t["format"] = "heatmap"
        if p["type"] == "table":
            t["format"] = "table"
        targets.append(t)
    defaults: dict = {"unit": p["unit"], "thresholds": _thresholds(p.get("thresholds")),
                      "color": {"mode": "thresholds" if p["type"] == "stat" else "palette-classic"}}
    options: dict = {}
    if p["type"] == "timeseries":
        custom = {"drawStyle": "bars" if p.get("bars") else "line", "lineWidth": 1, "fillOpacity": 10,
                  "showPoints": "never", "spanNulls": False,
                  "stacking": {"mode": "normal" if p.get("stack") else "none", "group": "A"}}
        defaults["custom"] = custom
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}}
    elif p["type"] == "stat":
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "background", "graphMode": "area", "textMode": "auto", "justifyMode": "auto",
                   "orientation": "auto"}
    elif p["type"] == "heatmap":
        options = {"calculate": False, "yAxis": {"unit": p["unit"], "axisPlacement": "left"},
                   "cellGap": 1, "color": {"mode": "scheme", "scheme": "Oranges", "exponent": 0.5, "steps": 64,
                                           "fill": "dark-orange", "scale": "exponential"},
                   "rowsFrame": {"layout": "auto"}, "tooltip": {"show": True, "yHistogram": True},
                   "legend": {"show": True}, "showValue": "never", "exemplars": {"color": "rgba(255,0,255,0.7)"}}
    elif p["type"] == "table":
        options = {"showHeader": True, "cellHeight": "sm"}
    panel = {"id": pid, "type": p["type"], "title": p["title"], "description": p["desc"], "datasource": DS,
             "gridPos": {"x": x, "y": y, "w": p["w"], "h": p["h"]}, "targets": targets,
             "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options}
    if p["type"] == "heatmap":
        panel["maxDataPoints"] = 100
    if p["type"] == "table":
        panel["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True,
                                                                                    "__name__": True}}}]
    return panel


def _variable_query(name: str, label: str, query: str) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "definition": query, "query": {"query": query, "refId": f"{name}-var", "qryType": 1},
            "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*", "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [], "hide": 0}


def build() -> dict:
    panels: list[dict] = []
    pid = 1
    y = 0
    for title, row in ROWS:
        panels.append({"id": pid, "type": "row", "title": title, "collapsed": False, "panels": [],
                       "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}})
        pid += 1
        y += 1
        x, row_h = 0, 0
        for p in row:
            if x + p["w"] > 24:
                x, y = 0, y + row_h
                row_h = 0
            panels.append(_panel(pid, p, x, y))
            pid += 1
            x += p["w"]
            row_h = max(row_h, p["h"])
        y += row_h
    annotations = [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                    "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
                    "type": "dashboard"}]
    for a in ANNOTATIONS:
        annotations.append({"name": a["name"], "datasource": DS, "enable": True, "hide": False,
                            "iconColor": a["color"], "expr": a["expr"], "step": "1s",
                            "titleFormat": a["title"], "tagKeys": a["tags"], "textFormat": "",
                            "useValueForTime": False})
    return {
        "uid": "ats-stress-recovery",
        "title": "ats-stress: ATC-invalidation recovery",
        "description": "IOMMU ATC-invalidation recovery under fault injection: UAF, fences, command-queue stalls, "
                       "unmap latency, recovery and endpoint states, per run and SMMU.",
        "tags": ["ats-stress", "iommu", "smmuv3"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {"list": annotations},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
             "regex": ""},
            _variable_query("run", "run", "label_values(ats_run_info, run)"),
            _variable_query("smmu", "SMMU", 'label_values(ats_run_info{run=~"$run"}, smmu)'),
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"written: {OUT}")
