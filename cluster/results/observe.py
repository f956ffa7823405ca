"""``ats-stress observe DIR``: a local Prometheus for one run, ready for Grafana.

- A live (ray) run: DIR/prometheus-targets.json is the file_sd targets file the driver writes and
  keeps current; Prometheus scrapes every exporting actor from it (the file may appear later: start
  observe first, then the run).
- A sim run: DIR/metrics.om (scenario time anchored at the run's wall-clock start) is imported with
  ``promtool tsdb create-blocks-from openmetrics`` into DIR/prometheus-data, which Prometheus serves.

Either way the alert rules of configs/alerts.yml are loaded. Errors are one paragraph (exit 2).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the ats_stress package: configs/ and grafana/ are in it
ALERTS = ROOT / "configs" / "alerts.yml"
PROVISIONING = ROOT / "grafana" / "provisioning"
DASHBOARD = ROOT / "grafana" / "dashboards" / "ats-stress.json"
TARGETS = "prometheus-targets.json"
OPENMETRICS = "metrics.om"


class ObserveError(Exception):
    """Bad input for observe: the message is the whole explanation."""


@dataclass
class Plan:
    mode: str  # "live" or "sim"
    config: Path
    storage: Path
    url: str
    argv: list[str]
    time_range: tuple[float, float] | None = None


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def write_config(path: Path, targets: Path | None, rules: Path | None, scrape_interval: str = "1s") -> None:
    lines = ["# written by `ats-stress observe` (from configs/prometheus.yml)", "global:",
             f"  scrape_interval: {scrape_interval}", f"  scrape_timeout: {scrape_interval}",
             f"  evaluation_interval: {scrape_interval}"]
    if rules is not None:
        lines += ["rule_files:", f"  - '{rules}'"]
    if targets is not None:
        lines += ["scrape_configs:", "  - job_name: ats-stress", "    honor_labels: true",
                  "    file_sd_configs:", f"      - files: ['{targets}']", "        refresh_interval: 5s"]
    path.write_text("\n".join(lines) + "\n")


def om_time_range(om: Path) -> tuple[float, float] | None:
    first = last = None
    pat = re.compile(r"^ats_scenario_time_seconds\{[^}]*\} \S+ (\S+)$")
    with om.open() as f:
        for line in f:
            if line.startswith("ats_scenario_time_seconds{"):
                m = pat.match(line.rstrip("\n"))
                if m:
                    ts = float(m.group(1))
                    first = ts if first is None else min(first, ts)
                    last = ts if last is None else max(last, ts)
    return (first, last) if first is not None else None


def plan(run_dir: Path, port: int, host: str = "127.0.0.1", prometheus: str | None = None,
         promtool: str | None = None) -> Plan:
    prometheus = prometheus or shutil.which("prometheus")
    if prometheus is None:
        raise ObserveError("prometheus is not installed (no `prometheus` on PATH). On Debian or Ubuntu: "
                           "`sudo apt-get install prometheus` (it brings promtool); elsewhere download it from "
                           "https://prometheus.io/download/ and put it on PATH. Then run `ats-stress observe` again.")
    if not run_dir.is_dir():
        raise ObserveError(f"{run_dir}: no such run directory. Give the --out directory of a run "
                           "(`ats-stress run SCENARIO --out DIR`); for a live run, create it and start observe first.")
    if not 0 < port < 65536:
        raise ObserveError(f"--port {port}: give a TCP port between 1 and 65535.")
    if not port_free(host, port):
        raise ObserveError(f"port {port} on {host} is in use (another Prometheus?). Stop it, or pick another "
                           "port with --port N (and point Grafana's datasource at that port).")
    run_dir = run_dir.resolve()
    storage = run_dir / "prometheus-data"
    targets = run_dir / TARGETS
    om = run_dir / OPENMETRICS
    rules = ALERTS if ALERTS.exists() else None
    config = run_dir / "prometheus.yml"
    time_range = None
    if om.exists() and not targets.exists():
        mode = "sim"
        promtool = promtool or shutil.which("promtool")
        if promtool is None:
            raise ObserveError("promtool is not installed (it comes with Debian's prometheus package); it is "
                               f"needed to import {om} into Prometheus.")
        time_range = om_time_range(om)
        if not (storage.exists() and any(storage.glob("*/meta.json"))):
            r = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(om), str(storage)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise ObserveError(f"promtool could not import {om}: {(r.stderr or r.stdout).strip()[-400:]}")
        write_config(config, None, rules)
    else:
        mode = "live"
        write_config(config, targets, rules)
    argv = [prometheus, f"--config.file={config}", f"--storage.tsdb.path={storage}",
            f"--web.listen-address={host}:{port}", "--storage.tsdb.retention.time=30d", "--log.level=warn"]
    return Plan(mode, config, storage, f"http://{host}:{port}", argv, time_range)


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def instructions(p: Plan, run_dir: Path) -> list[str]:
    out = [f"Prometheus for {run_dir} ({'live targets from ' + TARGETS if p.mode == 'live' else 'imported ' + OPENMETRICS}) "
           f"on {p.url} (config {p.config}); Ctrl-C stops it."]
    if p.mode == "live":
        out.append(f"Targets: {run_dir / TARGETS} (written by `ats-stress run --runtime ray --out {run_dir}`).")
    elif p.time_range:
        a, b = p.time_range
        out.append(f"The sim run's data is on {_utc(a)} .. {_utc(b)}: set Grafana's time range there "
                   f"(from={int(a * 1000)}&to={int(b * 1000) + 1000} in the dashboard URL).")
    out += [
        "Grafana: add a Prometheus datasource with URL " + p.url + " and import " + str(DASHBOARD) + ",",
        "  or let Grafana provision both: docker run --rm --network host -v " + str(ROOT / "grafana") +
        ":/etc/ats-stress/grafana -e GF_PATHS_PROVISIONING=/etc/ats-stress/grafana/provisioning grafana/grafana",
        "  (the provisioned datasource expects http://localhost:9090; edit "
        + str(PROVISIONING / "datasources" / "ats-stress.yaml") + " for another port).",
    ]
    return out


def run(p: Plan) -> int:
    """Run Prometheus in the foreground until it exits or the user interrupts; its exit code."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, stop)  # a terminated observe takes its Prometheus with it
    except ValueError:  # not the main thread
        pass
    proc = subprocess.Popen(p.argv)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return 130
