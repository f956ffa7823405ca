"""A real Prometheus (Debian's binary) scrapes the exporters, imports a sim run's OpenMetrics file,
checks the config and the alert rules, and answers every dashboard query with data.

Skipped (with the reason) when `prometheus` / `promtool` are not installed. No sleeps as
synchronisation: readiness, targets and scrapes are polled through Prometheus' HTTP API with a
bounded deadline; the Prometheus process is killed in the fixture's teardown.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "grafana"))

from ats_stress.cluster.results.metrics import DeviceExporter, SmmuExporter, run_labels, step_faults, write_file_sd  # noqa: E402
from ats_stress.cluster.scenario.plan import build_plan  # noqa: E402
from ats_stress.cluster.results.sampler import RunSampler  # noqa: E402
from ats_stress.cluster.runtime.sim import SimWorld, run_sim  # noqa: E402
from helpers import scenario  # noqa: E402

pytestmark = pytest.mark.prometheus

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
DEADLINE_S = 60.0
#: what Grafana makes of $__rate_interval with a 1 s scrape interval (4 x scrape interval)
RATE_INTERVAL = "4s"


def need(binary: str | None, name: str) -> str:
    if binary is None:
        pytest.skip(f"`{name}` is not installed (Debian: apt-get install prometheus); skipping the Prometheus tests")
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prom:
    """A running Prometheus and a tiny client for its HTTP API."""

    def __init__(self, url: str, proc: subprocess.Popen, log: Path):
        self.url = url
        self.proc = proc
        self.log = log

    def get(self, path: str, **params) -> dict:
        q = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}{'?' + q if q else ''}", timeout=10) as r:
            body = json.loads(r.read())
        assert body.get("status") == "success", body
        return body["data"]

    def wait(self, what: str, check, deadline: float = DEADLINE_S, poll: float = 0.2):
        """Poll ``check()`` until it returns a truthy value or the deadline passes."""
        end = time.monotonic() + deadline
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                got = check()
            except (OSError, AssertionError, ValueError):
                got = None
            if got:
                return got
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}; prometheus log: {self.log.read_text()[-1500:]}")
            threading.Event().wait(poll)

    def ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
            return r.status == 200

    def targets_up(self, n: int) -> bool:
        active = self.get("/api/v1/targets")["activeTargets"]
        return sum(1 for t in active if t["health"] == "up") >= n

    def scrapes(self, metric: str) -> int:
        """How many samples of ``metric`` Prometheus holds for the last minute (one per scrape)."""
        res = self.get("/api/v1/query", query=f"count_over_time({metric}[1m])")["result"]
        return int(max((float(r["value"][1]) for r in res), default=0))


@contextmanager
def prometheus(tmp: Path, config: str | None = None, storage: Path | None = None):
    binary = need(PROMETHEUS, "prometheus")
    port = free_port()
    cfg = tmp / "prometheus.yml"
    cfg.write_text(config or "global: {scrape_interval: 1s}\n")
    log = tmp / "prometheus.log"
    storage = storage or tmp / "data"
    with open(log, "w") as logf:
        proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={storage}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
                                 "--storage.tsdb.retention.time=1d"],
                                stdout=logf, stderr=subprocess.STDOUT)
    try:
        p = Prom(f"http://127.0.0.1:{port}", proc, log)
        p.wait("prometheus ready", p.ready)
        yield p
    finally:
        proc.kill()
        proc.wait(timeout=30)


def scrape_config(targets_file: Path, rules: Path | None = None) -> str:
    rules_part = f"rule_files: ['{rules}']\n" if rules else ""
    return ("global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n" + rules_part +
            "scrape_configs:\n  - job_name: ats-stress\n    honor_labels: true\n    file_sd_configs:\n"
            f"      - files: ['{targets_file}']\n        refresh_interval: 1s\n")


# --- promtool ----------------------------------------------------------------------------------


def test_promtool_check_config_passes_on_configs_prometheus_yml():
    tool = need(PROMTOOL, "promtool")
    r = subprocess.run([tool, "check", "config", str(ROOT / "configs/prometheus.yml")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 rules found" in r.stdout + r.stderr


def test_alert_rules_unit_tests_pass():
    tool = need(PROMTOOL, "promtool")
    r = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=ROOT / "tests", capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


# --- a sim run's OpenMetrics file ------------------------------------------------------------------


def small_fence_scenario(duration: float = 10.0, **over):
    """Hang on endpoint 5 at 2 s for 5 s under fence-on-timeout with spare queues: fenced at ~3 s,
    reset and unfenced ~2 s later; a second endpoint goes slow."""
    return scenario(duration=duration, policy={"name": "fence-on-timeout", "culprit_search": "per-device-batches",
                                               "reset_delay": 2.0},
                    hardware={"atc_inv_completion_timeout": 60, "command_queues": 4},
                    chaos=[{"at": 2, "fault": "hang", "endpoints": [5], "duration": 5},
                           {"at": 1, "fault": "slow", "endpoints": [9], "duration": 8,
                            "latency": {"median": "2ms", "p99": "20ms"}}], **over)


def test_sim_openmetrics_file_imports_with_promtool_and_prometheus_serves_it(tmp_path):
    tool = need(PROMTOOL, "promtool")
    need(PROMETHEUS, "prometheus")
    sc = small_fence_scenario()
    sampler = RunSampler(sc, run_id="om-test", start_wall=time.time() - 30)
    summary = run_sim(sc, progress_every=0.25, sample=sampler)
    assert summary["fence_count"] >= 1
    om = sampler.write_openmetrics(tmp_path / "metrics.om")
    text = om.read_text()
    assert text.rstrip().endswith("# EOF")
    data = tmp_path / "tsdb"
    r = subprocess.run([tool, "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list(data.glob("*/meta.json")), "promtool wrote no block"
    # and Prometheus reads the imported blocks: the fence is there, on the run's time line
    with prometheus(tmp_path, storage=data) as p:
        end = sampler.om.timestamp(sc.duration)
        res = p.wait("imported data", lambda: p.get("/api/v1/query", query='max(ats_fences_total{run="om-test"})',
                                                     time=end)["result"])
        assert float(res[0]["value"][1]) == summary["fence_count"]
        rng = p.get("/api/v1/query_range", query='sum(ats_fenced_streams{run="om-test"})',
                    start=sampler.start_wall, end=end, step=1)["result"]
        assert max(float(v) for _, v in rng[0]["values"]) >= 1


# --- live scrape of exporters over a running model, and every dashboard query ----------------------------


class PacedSim:
    """A SimWorld advanced in a thread at ``pace`` scenario seconds per wall second (the stand-in for the
    ray runtime's live actors), with real exporters serving it."""

    def __init__(self, sc, run_id: str, pace: float = 1.0, step: float = 0.1):
        self.sc = sc
        self.world = SimWorld(build_plan(sc))
        self.world.start()
        self.pace = pace
        self.step = step
        self.done = threading.Event()
        self.stop = threading.Event()
        base = run_labels(run_id, sc)
        self.exporters = [SmmuExporter(n, o, {**base, "smmu": str(n.spec.index)})
                          for n, o in zip(self.world.nodes, self.world.oracles)]
        self.exporters += [DeviceExporter(g, {**base, "group": str(g.index)}, step_faults=step_faults(sc))
                           for g in self.world.groups]
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> list[dict]:
        targets = []
        for e in self.exporters:
            host, port = e.start()
            targets.append({"targets": [f"{host}:{port}"], "labels": {"job": "ats-stress"}})
        return targets

    def go(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        t = 0.0
        tick = threading.Event()
        while t < self.sc.duration and not self.stop.is_set():
            t = min(self.sc.duration, t + self.step)
            self.world.loop.run(t)
            for e in self.exporters:
                e.set_time(t)
            tick.wait(self.step / self.pace)  # the workload's clock (like the ray runtime's time_scale)
        self.done.set()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        for e in self.exporters:
            e.stop()


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title / annotation name, PromQL) for every panel target and annotation of the dashboard."""
    dash = json.loads((ROOT / "grafana/dashboards/ats-stress.json").read_text())
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    for a in dash["annotations"]["list"]:
        if a.get("expr"):
            out.append((f"annotation: {a['name']}", a["expr"]))
    return out


def substitute(expr: str, run_id: str) -> str:
    return (expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__interval", "1s")
            .replace("$run", run_id).replace("$smmu", ".*"))


def has_data(result: list) -> bool:
    for series in result:
        for _, v in series.get("values", []):
            if math.isfinite(float(v)):
                return True
    return False


def test_live_exporters_scraped_by_prometheus_answer_every_dashboard_query(tmp_path):
    need(PROMETHEUS, "prometheus")
    sc = small_fence_scenario()
    run_id = "live-sim-test"
    sim = PacedSim(sc, run_id, pace=1.0)
    targets_file = tmp_path / "prometheus-targets.json"
    try:
        targets = sim.start()
        write_file_sd(targets_file, targets)
        with prometheus(tmp_path, scrape_config(targets_file, ROOT / "configs/alerts.yml")) as p:
            p.wait("every exporter up", lambda: p.targets_up(len(targets)))
            start = time.time()
            sim.go()
            p.wait("the paced run to finish", sim.done.is_set, deadline=sc.duration / sim.pace + 60)
            # a few more scrapes after the end, so rates over the last window exist
            n_end = p.scrapes(f'ats_scenario_time_seconds{{run="{run_id}"}}')
            p.wait("scrapes after the run", lambda: p.scrapes(f'ats_scenario_time_seconds{{run="{run_id}"}}') >= n_end + 3)
            end = time.time()
            # the run is there: fenced, unfenced, the hang visible as a stalled CMD_SYNC
            fences = p.get("/api/v1/query", query=f'sum(ats_fences_total{{run="{run_id}"}})')["result"]
            assert float(fences[0]["value"][1]) >= 1
            # the variables' queries (Grafana's label_values) resolve
            assert p.get("/api/v1/label/run/values", **{"match[]": "ats_run_info"}) == [run_id]
            assert p.get("/api/v1/label/smmu/values", **{"match[]": f'ats_run_info{{run=~"{run_id}"}}'}) == ["0"]
            # every panel query and annotation returns data over the run
            assert check_dashboard_against(p, run_id, start, end) >= 40
            # the alert rules loaded and the fence alert fired at some point
            rules = p.get("/api/v1/rules")["groups"][0]["rules"]
            assert {r["name"] for r in rules} == {"AtsUafExposure", "AtsStreamFenced", "AtsCmdSyncStalled",
                                                  "AtsResetFailed"}
            fired = p.get("/api/v1/query_range", query='ALERTS{alertname="AtsStreamFenced"}',
                          start=start - 30, end=end, step=1)["result"]
            assert fired, "AtsStreamFenced never fired while a stream was fenced"
    finally:
        sim.close()


def check_dashboard_against(p: Prom, run_id: str, start: float, end: float) -> int:
    """Every panel query and annotation of the dashboard returns data for ``run_id``; how many ran."""
    queries = dashboard_queries()
    empty = []
    for title, expr in queries:
        q = substitute(expr, run_id)
        res = p.get("/api/v1/query_range", query=q, start=start - 30, end=end, step=1)["result"]
        if not has_data(res):
            empty.append(f"{title}: {q}")
    assert not empty, "dashboard queries with no data:\n" + "\n".join(empty)
    return len(queries)


@pytest.mark.ray
def test_live_ray_run_scraped_through_the_drivers_file_sd_answers_every_dashboard_query(tmp_path):
    """The real thing: the ray runtime's actors serve /metrics, its driver writes the file_sd targets
    file, Prometheus discovers and scrapes them during a run with a hang and a fence."""
    need(PROMETHEUS, "prometheus")
    pytest.importorskip("ray")
    from ats_stress.cluster.runtime.ray_runtime import run_ray

    sc = scenario(duration=12, topology={"smmus": 1, "endpoints": 16, "domains": 4, "cpus": 2,
                                         "endpoints_per_actor": 8, "pages_per_domain": 16, "spare_pages": 32,
                                         "atc_entries": 64},
                  hardware={"atc_inv_completion_timeout": 60, "command_queues": 3},
                  workload={"unmaps_per_s": 20, "dma_per_endpoint_per_s": 40,
                            "inv_latency": {"median": "5us", "p99": "50us"}},
                  policy={"name": "fence-on-timeout", "culprit_search": "per-device-batches", "reset_delay": 3.0},
                  chaos=[{"at": 2, "fault": "hang", "endpoints": [5], "duration": 6},
                         {"at": 1, "fault": "slow", "endpoints": [9], "duration": 9,
                          "latency": {"median": "2ms", "p99": "20ms"}}],
                  runtime={"time_scale": 1.0})
    out = tmp_path / "run"
    out.mkdir()
    targets = out / "prometheus-targets.json"
    with prometheus(tmp_path, scrape_config(targets, ROOT / "configs/alerts.yml")) as p:
        start = time.time()
        summary = run_ray(sc, address=None, out_dir=out, quiet=True, metrics_bind="127.0.0.1", num_cpus=2)
        end = time.time()
        assert summary["status"] == "complete" and summary["fence_count"] >= 1
        assert len(json.loads(targets.read_text())) == 3  # one SMMU actor and two device actors
        (run_id,) = p.get("/api/v1/label/run/values", **{"match[]": "ats_run_info"})
        assert p.get("/api/v1/label/smmu/values", **{"match[]": "ats_run_info"}) == ["0"]
        fences = p.get("/api/v1/query", query=f'max_over_time(sum(ats_fences_total{{run="{run_id}"}})[2m:1s])',
                       time=end)["result"]
        assert float(fences[0]["value"][1]) >= 1
        n = check_dashboard_against(p, run_id, start, end)
        assert n >= 40


# --- ats-stress observe --------------------------------------------------------------------------------


def test_observe_without_prometheus_is_a_clear_exit_2(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ats_stress.cluster.results import observe
    from ats_stress.cluster.cli import app

    monkeypatch.setattr(observe.shutil, "which", lambda name: None)
    r = CliRunner().invoke(app, ["observe", str(tmp_path)])
    assert r.exit_code == 2
    assert "prometheus is not installed" in r.output and "apt-get install prometheus" in r.output
    assert "Traceback" not in r.output


def test_observe_port_in_use_is_a_clear_exit_2(tmp_path):
    need(PROMETHEUS, "prometheus")
    from typer.testing import CliRunner

    from ats_stress.cluster.cli import app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = CliRunner().invoke(app, ["observe", str(tmp_path), "--port", str(port)])
    assert r.exit_code == 2
    assert f"port {port}" in r.output and "in use" in r.output


def test_observe_serves_a_sim_run_and_watches_a_live_runs_targets(tmp_path):
    need(PROMETHEUS, "prometheus")
    need(PROMTOOL, "promtool")
    from ats_stress.cluster.results import observe

    # a sim run directory: metrics.om is imported and served
    sc = small_fence_scenario(duration=5)
    sampler = RunSampler(sc, run_id="observe-sim", start_wall=time.time() - 20)
    run_sim(sc, sample=sampler)
    sim_dir = tmp_path / "sim"
    sampler.write_openmetrics(sim_dir / "metrics.om")
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    for run_dir, mode in ((sim_dir, "sim"), (live_dir, "live")):
        port = free_port()
        p = observe.plan(run_dir, port)
        assert p.mode == mode
        text = p.config.read_text()
        assert "alerts.yml" in text
        assert ("file_sd_configs" in text) == (mode == "live")
        lines = observe.instructions(p, run_dir)
        assert any("Grafana" in line for line in lines)
        log = (tmp_path / f"{mode}.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "ats_stress.cluster.cli", "observe", str(run_dir), "--port", str(port)],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            prom = Prom(f"http://127.0.0.1:{port}", proc, tmp_path / f"{mode}.log")
            prom.wait("observe's prometheus", prom.ready)
            if mode == "sim":
                res = prom.get("/api/v1/query", query='max(ats_fences_total{run="observe-sim"})',
                               time=sampler.om.timestamp(sc.duration))["result"]
                assert float(res[0]["value"][1]) >= 1
            else:
                cfg = prom.get("/api/v1/status/config")["yaml"]
                assert str(live_dir / "prometheus-targets.json") in cfg
            assert len(prom.get("/api/v1/rules")["groups"][0]["rules"]) == 4
        finally:
            proc.terminate()  # observe forwards it to its Prometheus
            proc.wait(timeout=30)
            log.close()


def test_observe_reimports_a_sim_run_only_when_a_new_run_replaced_its_metrics(tmp_path):
    need(PROMETHEUS, "prometheus")
    need(PROMTOOL, "promtool")
    from ats_stress.cluster.results import observe

    sc = small_fence_scenario(duration=3)
    run_dir = tmp_path / "run"

    def sim_run(run_id: str) -> None:
        sampler = RunSampler(sc, run_id=run_id, start_wall=time.time() - 20)
        run_sim(sc, sample=sampler)
        sampler.write_openmetrics(run_dir / "metrics.om")

    def blocks() -> set[str]:
        return {p.parent.name for p in (run_dir / "prometheus-data").glob("*/meta.json")}

    sim_run("first")
    observe.plan(run_dir, free_port())
    first = blocks()
    assert first
    observe.plan(run_dir, free_port())
    assert blocks() == first  # the same metrics.om: not imported again
    sim_run("second")
    observe.plan(run_dir, free_port())
    assert blocks() and not blocks() & first  # the earlier run's data is gone
