"""Prometheus metrics for a run: exporters that read the live model at scrape time.

The model (``iommu_actor``, ``device_actors``) stays sans-IO: it counts plain numbers and
fixed-bucket histograms (``iommu_actor.stats``). Here a prometheus_client custom collector turns
the model objects into metric families when Prometheus scrapes, so recording costs nothing between
scrapes. Base units (seconds), ``_total`` counters, labels ``run``, ``scenario``, ``policy`` and
``smmu`` (or ``group`` for device actors); never a per-endpoint label.

- ``SmmuExporter(node, oracle, labels, bind)`` and ``DeviceExporter(group, labels, bind)`` serve
  ``/metrics`` on a port of their own (``start()`` returns host and port; ``set_time`` tells them
  the scenario time). The ray runtime starts one per actor.
- ``write_file_sd(path, targets)`` writes Prometheus' file_sd targets file atomically.
- ``OpenMetricsRecorder`` samples the same families on scenario time, timestamped from the run's
  wall-clock start, into an OpenMetrics file that ``promtool tsdb create-blocks-from openmetrics``
  imports (the sim runtime has no live process to scrape).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from ats_stress.device_actors.endpoint import MODE_NAMES
from ats_stress.iommu_actor.spec import CMDQ_OP_CMD_SYNC, EVT_NAMES, OPCODE_NAMES
from ats_stress.iommu_actor.stats import DURATION_BUCKETS, Histogram

#: every metric family the exporters produce: name -> (type, help). Names as exposed in the
#: text format (counters with ``_total``, histograms with ``_bucket``/``_sum``/``_count``).
SMMU_METRICS: dict[str, tuple[str, str]] = {
    "ats_run_info": ("info", "The run: scenario, policy, runtime and the SMMU's shape."),
    "ats_scenario_time_seconds": ("gauge", "Scenario time the exporter has reached."),
    "ats_commands_total": ("counter", "Commands submitted to the SMMU's command queues, by opcode."),
    "ats_cmdq_depth": ("gauge", "Commands queued and not yet consumed (PROD - CONS), all queues of the SMMU."),
    "ats_cmdq_depth_max": ("gauge", "Commands queued in the SMMU's deepest command queue."),
    "ats_cmdq_halted_queues": ("gauge", "Command queues halted with CMDQ_CONS.ERR set (waiting for GERRORN)."),
    "ats_cmd_sync_oldest_pending_seconds": ("gauge", "Age of the oldest CMD_SYNC not yet retired (0: none pending): how long a queue has been wedged."),
    "ats_cmd_sync_duration_seconds": ("histogram", "CMD_SYNC duration, from submission to retirement."),
    "ats_unmap_duration_seconds": ("histogram", "Software-visible unmap duration (arrival to reported complete); class=healthy when no endpoint of the domain is a chaos target, else affected."),
    "ats_unmaps_arrived_total": ("counter", "Unmaps that arrived from the workload."),
    "ats_unmaps_open": ("gauge", "Unmaps not yet reported complete (in flight or waiting for their CPU)."),
    "ats_unmap_oldest_open_seconds": ("gauge", "Age of the oldest unmap not yet reported complete: the current stall."),
    "ats_sync_timeouts_total": ("counter", "Software CMD_SYNC timeouts (each wait counted once)."),
    "ats_hw_atc_inv_timeouts_total": ("counter", "ATC invalidations given up by the hardware completion timeout."),
    "ats_cmdq_errors_total": ("counter", "GERROR.CMDQ_ERR raised, by CMDQ_CONS.ERR code (CERROR_ATC_INV_SYNC)."),
    "ats_fences_total": ("counter", "Streams fenced: the blocking STE took effect."),
    "ats_unfences_total": ("counter", "Streams unfenced: the STE was restored after a reset."),
    "ats_fenced_streams": ("gauge", "Streams currently fenced."),
    "ats_fenced_healthy_total": ("counter", "Fences of a stream whose device had no fault (culprit mistakes)."),
    "ats_fence_latency_seconds": ("histogram", "Fence latency: from the device's fault start to the blocking STE in effect."),
    "ats_recovery_duration_seconds": ("histogram", "Recovery: from the successful reset's start to the unfence."),
    "ats_resets_total": ("counter", "Device resets (FLR) finished, by outcome."),
    "ats_translated_requests_total": ("counter", "Translated requests by outcome: allowed (reached memory legitimately), uaf (reached memory after its unmap was reported complete), blocked (by the STE)."),
    "ats_uaf_exposures_total": ("counter", "UAF exposures: translated requests that reached memory after their unmap was reported complete."),
    "ats_uaf_reallocated_total": ("counter", "UAF exposures to a page already given to another mapping."),
    "ats_cpu_lockup_seconds_total": ("counter", "CPU-seconds spent spinning with interrupts off."),
    "ats_smmu_events_total": ("counter", "SMMU event queue records, by event."),
}
DEVICE_METRICS: dict[str, tuple[str, str]] = {
    "ats_endpoints": ("gauge", "Endpoints by state."),
    "ats_chaos_step_endpoints": ("gauge", "Endpoints currently under a chaos step (one series per active step)."),
    "ats_dma_requests_total": ("counter", "DMA requests issued by the endpoints, by kind."),
    "ats_inv_requests_total": ("counter", "Invalidate Requests received by the endpoints, by outcome."),
}
ALL_METRICS = {**SMMU_METRICS, **DEVICE_METRICS}

_TYPES = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}


class MetricsError(RuntimeError):
    """An exporter could not start (bad bind address, no free port)."""


def _family(name: str, labelnames: list[str]) -> Metric:
    typ, doc = ALL_METRICS[name]
    if typ == "counter":
        return CounterMetricFamily(name[: -len("_total")], doc, labels=labelnames)
    if typ == "info":
        return InfoMetricFamily(name[: -len("_info")], doc, labels=labelnames)
    return _TYPES[typ](name, doc, labels=labelnames)


def _buckets(h: Histogram) -> tuple[list[tuple[str, float]], float]:
    cum = h.cumulative()
    return [(floatToGoString(le), float(n)) for le, n in cum], float(h.sum)


def _hist_of(values: Iterable[float]) -> Histogram:
    h = Histogram(DURATION_BUCKETS)
    for v in values:
        h.observe(v)
    return h


class _Builder:
    """Families under construction with constant labels and an optional timestamp."""

    def __init__(self, const: dict[str, str], ts: float | None):
        self.const = const
        self.ts = ts
        self.families: dict[str, Metric] = {}

    def _get(self, name: str, extra: tuple[str, ...]) -> Metric:
        fam = self.families.get(name)
        if fam is None:
            fam = self.families[name] = _family(name, list(self.const) + list(extra))
        return fam

    def add(self, name: str, value: float, **extra: str) -> None:
        fam = self._get(name, tuple(extra))
        values = list(self.const.values()) + [str(v) for v in extra.values()]
        fam.add_metric(values, float(value), timestamp=self.ts)

    def info(self, name: str, info: dict[str, str]) -> None:
        fam = self._get(name, ())
        fam.add_metric(list(self.const.values()), info, timestamp=self.ts)

    def hist(self, name: str, h: Histogram, **extra: str) -> None:
        fam = self._get(name, tuple(extra))
        buckets, total = _buckets(h)
        fam.add_metric(list(self.const.values()) + [str(v) for v in extra.values()], buckets, total,
                       timestamp=self.ts)

    def result(self) -> list[Metric]:
        return list(self.families.values())


def smmu_families(node, oracle, const: dict[str, str], now: float, ts: float | None = None) -> list[Metric]:
    """The SMMU side of a run at scenario time ``now``, read from a SmmuNode and its oracle."""
    b = _Builder(const, ts)
    smmu = node.smmu
    spec = node.spec
    b.info("ats_run_info", {"command_queues": str(spec.command_queues), "cpus": str(spec.cpus),
                            "streams": str(len(spec.sids))})
    b.add("ats_scenario_time_seconds", now)
    counts = dict(smmu.cmd_counts)
    counts.setdefault(CMDQ_OP_CMD_SYNC, 0)
    for op, n in sorted(counts.items()):
        b.add("ats_commands_total", n, opcode=OPCODE_NAMES.get(op, hex(op)))
    depths = [q.depth for q in smmu.queues]
    b.add("ats_cmdq_depth", sum(depths))
    b.add("ats_cmdq_depth_max", max(depths) if depths else 0)
    b.add("ats_cmdq_halted_queues", sum(1 for q in smmu.queues if q.err != 0))
    b.add("ats_cmd_sync_oldest_pending_seconds", smmu.oldest_sync_age(now))
    b.hist("ats_cmd_sync_duration_seconds", smmu.sync_duration)
    for affected, cls in ((False, "healthy"), (True, "affected")):
        b.hist("ats_unmap_duration_seconds", node.unmap_duration[affected], **{"class": cls})
    b.add("ats_unmaps_arrived_total", node.unmaps_arrived)
    open_h, open_a = node.open_unmap_ages(now)
    for cls, ages in (("healthy", open_h), ("affected", open_a)):
        b.add("ats_unmaps_open", len(ages), **{"class": cls})
        b.add("ats_unmap_oldest_open_seconds", max(ages, default=0.0), **{"class": cls})
    b.add("ats_sync_timeouts_total", dict(node.notes).get("sync_timeout", 0))
    b.add("ats_hw_atc_inv_timeouts_total", smmu.hw_atc_timeouts)
    b.add("ats_cmdq_errors_total", smmu.cmdq_errors, cerror="CERROR_ATC_INV_SYNC")
    fences = list(oracle.fences)
    unfences = list(oracle.unfences)
    b.add("ats_fences_total", len(fences))
    b.add("ats_unfences_total", len(unfences))
    b.add("ats_fenced_streams", len(oracle.fenced))
    b.add("ats_fenced_healthy_total", oracle.fenced_healthy)
    b.hist("ats_fence_latency_seconds", _hist_of(f["latency_s"] for f in fences if f["latency_s"] is not None))
    b.hist("ats_recovery_duration_seconds",
           _hist_of(f["recovery_s"] for f in unfences if f["recovery_s"] is not None))
    resets = list(oracle.resets)
    ok = sum(1 for r in resets if r["ok"])
    b.add("ats_resets_total", ok, outcome="ok")
    b.add("ats_resets_total", len(resets) - ok, outcome="failed")
    uaf = oracle.uaf_exposures
    b.add("ats_translated_requests_total", oracle.translated_allowed - uaf, outcome="allowed")
    b.add("ats_translated_requests_total", uaf, outcome="uaf")
    b.add("ats_translated_requests_total", oracle.translated_blocked, outcome="blocked")
    b.add("ats_uaf_exposures_total", uaf)
    b.add("ats_uaf_reallocated_total", oracle.uaf_reallocated)
    b.add("ats_cpu_lockup_seconds_total", node.lockup_s + node.open_spin_s(now))
    evts = dict(smmu.evt_counts)
    for e, n in sorted(evts.items()):
        b.add("ats_smmu_events_total", n, event=EVT_NAMES.get(e, hex(e)))
    if not evts:  # keep the family present
        b.add("ats_smmu_events_total", 0, event="F_TRANSL_FORBIDDEN")
    return b.result()


def device_families(group, const: dict[str, str], now: float, ts: float | None = None,
                    step_faults: dict[int, str] | None = None) -> list[Metric]:
    """The endpoint side at scenario time ``now``, read from an EndpointGroup."""
    b = _Builder(const, ts)
    modes = dict.fromkeys(MODE_NAMES, 0)
    steps: dict[int, int] = {}
    first_mode: dict[int, str] = {}
    for ep in list(group.eps):
        mode = MODE_NAMES[ep.mode]
        modes[mode] += 1
        if ep.step >= 0 and ep.mode != 0:
            steps[ep.step] = steps.get(ep.step, 0) + 1
            first_mode.setdefault(ep.step, mode)
    for state, n in modes.items():
        b.add("ats_endpoints", n, state=state)
    for step, n in sorted(steps.items()):
        fault = (step_faults or {}).get(step) or first_mode[step]
        b.add("ats_chaos_step_endpoints", n, step=str(step), fault=fault)
    b.add("ats_dma_requests_total", group.translated_sent, kind="translated")
    b.add("ats_dma_requests_total", group.translation_requests, kind="translation_request")
    b.add("ats_inv_requests_total", group.inv_answered, outcome="answered")
    b.add("ats_inv_requests_total", group.inv_lost, outcome="lost")
    b.add("ats_inv_requests_total", group.inv_ignored, outcome="ignored")
    fams = b.result()
    if "ats_chaos_step_endpoints" not in b.families:  # present (empty) so the family is described
        fams.append(_family("ats_chaos_step_endpoints", list(const) + ["step", "fault"]))
    return fams


def parse_bind(bind: str | None) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` (port 0 or none: any free port) -> (host, port)."""
    bind = (bind or "127.0.0.1").strip()
    if bind.startswith("["):
        host, _, rest = bind[1:].partition("]")
        port = rest.lstrip(":")
    elif bind.count(":") == 1:
        host, port = bind.split(":")
    else:
        host, port = bind, ""
    try:
        return host or "127.0.0.1", int(port or 0)
    except ValueError:
        raise MetricsError(f"metrics bind {bind!r}: give a host, host:port, or a bracketed IPv6 address with its port") from None


def _outward_ip() -> str:
    """This host's address on its default route (a UDP connect sends nothing); loopback if none."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


class _Exporter:
    """A registry with one custom collector, served over HTTP on a port of its own."""

    def __init__(self, labels: dict[str, str], bind: str = "127.0.0.1"):
        labels = {str(k): str(v) for k, v in labels.items()}
        if "run" not in labels:  # every series carries a run id (the dashboard's $run variable)
            labels["run"] = "-".join(labels[k] for k in ("scenario", "policy") if k in labels) or "run"
        self.labels = labels
        self.bind = bind
        self._time = 0.0
        self._server = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def set_time(self, scenario_s: float) -> None:
        self._time = float(scenario_s)

    def families(self, now: float, ts: float | None = None) -> list[Metric]:
        raise NotImplementedError

    def _now(self) -> float:
        return self._time

    def collect(self):
        # The model is mutated by its actor while we read it: a read that races a resize is
        # retried (each read copies what it iterates, so a retry sees a consistent container).
        for attempt in range(5):
            try:
                return self.families(self._now())
            except (RuntimeError, IndexError, KeyError):
                if attempt == 4:
                    raise
        return []

    def start(self) -> tuple[str, int]:
        from prometheus_client import start_http_server

        host, port = parse_bind(self.bind)
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise MetricsError(f"cannot serve /metrics on {self.bind!r}: {exc.strerror or exc}") from None
        host, port = self._server.server_address[:2]
        if host in ("0.0.0.0", "::", ""):  # every interface: advertise one Prometheus can reach
            host = _outward_ip()
        return str(host), int(port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class SmmuExporter(_Exporter):
    """/metrics for one SMMU actor: its SmmuNode and the oracle that judges it."""

    def __init__(self, node, oracle, labels: dict[str, str], bind: str = "127.0.0.1"):
        self.node = node
        self.oracle = oracle
        super().__init__({"smmu": str(node.spec.index), **labels}, bind)

    def _now(self) -> float:
        return max(self._time, self.node.now)

    def families(self, now: float, ts: float | None = None) -> list[Metric]:
        return smmu_families(self.node, self.oracle, self.labels, now, ts)


class DeviceExporter(_Exporter):
    """/metrics for one device actor: its EndpointGroup."""

    def __init__(self, group, labels: dict[str, str], bind: str = "127.0.0.1",
                 step_faults: dict[int, str] | None = None):
        self.group = group
        self.step_faults = dict(step_faults or {})
        super().__init__({"group": str(group.index), **labels}, bind)

    def _now(self) -> float:
        return max(self._time, self.group.now)

    def families(self, now: float, ts: float | None = None) -> list[Metric]:
        return device_families(self.group, self.labels, now, ts, self.step_faults)


def write_file_sd(path: str | os.PathLike, targets: list[dict[str, Any]]) -> None:
    """Write a Prometheus file_sd targets file atomically (temp file + rename in the same directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = [{"targets": [str(t) for t in g["targets"]],
              "labels": {str(k): str(v) for k, v in (g.get("labels") or {}).items()}} for g in targets]
    fd, tmp = tempfile.mkstemp(prefix=".targets-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(clean, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class OpenMetricsRecorder:
    """Samples of metric families on scenario time, written as one OpenMetrics file.

    Each family appears once, its series one after another, each series' points in time order:
    what ``promtool tsdb create-blocks-from openmetrics`` wants.
    """

    def __init__(self, start_wall: float):
        self.start_wall = start_wall
        self._families: dict[str, Metric] = {}
        self._series: dict[str, dict[tuple, list]] = {}
        self._lock = threading.Lock()

    def timestamp(self, scenario_s: float) -> float:
        return round(self.start_wall + scenario_s, 3)

    def add(self, families: Iterable[Metric]) -> None:
        with self._lock:
            for fam in families:
                if fam.name not in self._families:
                    self._families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                    self._series[fam.name] = {}
                series = self._series[fam.name]
                for s in fam.samples:
                    key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                    series.setdefault(key, []).append(s)

    def collect(self):
        for name, fam in self._families.items():
            out = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            for samples in self._series[name].values():
                out.samples.extend(samples)
            yield out

    def render(self) -> bytes:
        from prometheus_client.openmetrics.exposition import generate_latest

        with self._lock:
            return generate_latest(self)

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(self.render())
        tmp.replace(path)
        return path


def run_labels(run_id: str, sc, **extra: str) -> dict[str, str]:
    return {"run": run_id, "scenario": sc.name, "policy": sc.policy.name, **extra}


def step_faults(sc) -> dict[int, str]:
    """Chaos step index -> fault name, for the ``fault`` label of ``ats_chaos_step_endpoints``."""
    return {i: str(step.fault) for i, step in enumerate(sc.chaos)}
