"""``ats-stress observe DIR``: a local Prometheus for one run, ready for Grafana.

- A live (ray) run: DIR/prometheus-targets.json is the file_sd targets file the driver writes and
  keeps current; Prometheus scrapes every exporting actor from it (the file may appear later: start
  observe first, then the run).
- A sim run: DIR/metrics.om (scenario time anchored at the run's wall-clock start) is imported with
  ``promtool tsdb create-blocks-from openmetrics`` into DIR/prometheus-data, which Prometheus serves.

Which of the two comes from what the last run into DIR wrote (its summary.json names the runtime;
without one, a live run is under way or about to start), and observe says which. The config is
configs/prometheus.yml with DIR's targets and the absolute path of configs/alerts.yml; both and the
Grafana dashboard ship in the package, and observe stops with one paragraph when one is missing.
Errors are one paragraph (exit 2).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the ats_stress package: configs/ and grafana/ are in it
CONFIG = ROOT / "configs" / "prometheus.yml"
ALERTS = ROOT / "configs" / "alerts.yml"
PROVISIONING = ROOT / "grafana" / "provisioning"
DASHBOARD = ROOT / "grafana" / "dashboards" / "ats-stress.json"
TARGETS = "prometheus-targets.json"
OPENMETRICS = "metrics.om"
#: in the storage directory: which metrics.om was imported into it (a later sim run re-imports)
IMPORTED = "ats-stress-imported.json"


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
    source: str = ""  # which run's output this is, for the person


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def write_config(path: Path, targets: Path | None, rules: Path) -> None:
    """configs/prometheus.yml with the absolute path of the rules and, for a live run, DIR's targets
    file (a sim run's imported data needs no scraping)."""
    import yaml

    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["rule_files"] = [str(rules)]
    if targets is None:
        cfg.pop("scrape_configs", None)
    else:
        for job in cfg.get("scrape_configs") or []:
            for sd in job.get("file_sd_configs") or []:
                sd["files"] = [str(targets)]
    path.write_text(f"# written by `ats-stress observe` from {CONFIG}\n" + yaml.safe_dump(cfg, sort_keys=False))


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


def _shipped() -> None:
    for what, path in (("the Prometheus config", CONFIG), ("the alert rules", ALERTS),
                       ("the Grafana dashboard", DASHBOARD)):
        if not path.is_file():
            raise ObserveError(f"{what} is missing (looked for {path}): this ats-stress installation is "
                               "incomplete. Reinstall it (`pip install --force-reinstall ats-stress`, or "
                               "`pip install .` from a checkout): the package ships configs/ and grafana/.")


def last_run(run_dir: Path) -> dict | None:
    """What DIR/summary.json says about the last run written there (None: no finished run)."""
    try:
        s = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return s if isinstance(s, dict) else None


def _describe(s: dict, run_dir: Path) -> str:
    when = datetime.fromtimestamp((run_dir / "summary.json").stat().st_mtime, tz=timezone.utc)
    return (f"the {s.get('runtime')} run of {s.get('scenario')} (policy {s.get('policy')}, seed {s.get('seed')}, "
            f"{s.get('status')}) written at {when:%Y-%m-%d %H:%M:%S} UTC")


def _import(om: Path, storage: Path, promtool: str) -> None:
    """Import ``om`` into ``storage`` unless that very file (size, mtime) is what it holds."""
    st = om.stat()
    stamp = {"file": str(om), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        if json.loads((storage / IMPORTED).read_text()) == stamp:
            return
    except (OSError, ValueError):
        pass
    shutil.rmtree(storage, ignore_errors=True)  # another run's import, or a half-done one
    r = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(om), str(storage)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise ObserveError(f"promtool could not import {om}: {(r.stderr or r.stdout).strip()[-400:]}")
    (storage / IMPORTED).write_text(json.dumps(stamp))


def plan(run_dir: Path, port: int, host: str = "127.0.0.1", prometheus: str | None = None,
         promtool: str | None = None) -> Plan:
    prometheus = prometheus or shutil.which("prometheus")
    if prometheus is None:
        raise ObserveError("prometheus is not installed (no `prometheus` on PATH). On Debian or Ubuntu: "
                           "`sudo apt-get install prometheus` (it brings promtool); elsewhere download it from "
                           "https://prometheus.io/download/ and put it on PATH. Then run `ats-stress observe` again.")
    _shipped()
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
    config = run_dir / "prometheus.yml"
    time_range = None
    last = last_run(run_dir)
    sim = last.get("runtime") == "sim" if last else (om.exists() and not targets.exists())
    if sim:
        if not om.exists():
            raise ObserveError(f"{run_dir}: the last run there ({_describe(last, run_dir)}) left no {OPENMETRICS} "
                               "to import; run it again into this directory.")
        promtool = promtool or shutil.which("promtool")
        if promtool is None:
            raise ObserveError("promtool is not installed (it comes with Debian's prometheus package); it is "
                               f"needed to import {om} into Prometheus.")
        time_range = om_time_range(om)
        _import(om, storage, promtool)
        mode = "sim"
        source = (_describe(last, run_dir) if last else "a sim run") + f": its {OPENMETRICS}, imported"
        write_config(config, None, ALERTS)
    else:
        if (storage / IMPORTED).exists():  # a sim run's import: not this live run's data
            shutil.rmtree(storage)
        mode = "live"
        if last:
            source = (f"{_describe(last, run_dir)}: its actors are gone, so Prometheus serves only what it "
                      f"scraped while the run went ({storage})")
        elif targets.exists():
            source = f"a live run under way: the actors in its {TARGETS}"
        else:
            source = (f"the live run to come (start it with `ats-stress run SCENARIO --runtime ray --out {run_dir}`): "
                      f"its driver writes {TARGETS} here")
        write_config(config, targets, ALERTS)
    argv = [prometheus, f"--config.file={config}", f"--storage.tsdb.path={storage}",
            f"--web.listen-address={host}:{port}", "--storage.tsdb.retention.time=30d", "--log.level=warn"]
    return Plan(mode, config, storage, f"http://{host}:{port}", argv, time_range, source)


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def instructions(p: Plan, run_dir: Path) -> list[str]:
    out = [f"Prometheus on {p.url} for {run_dir}: {p.source} (config {p.config}, alert rules {ALERTS}); "
           "Ctrl-C stops it."]
    if p.time_range:
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
