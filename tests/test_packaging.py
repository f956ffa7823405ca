"""What `pip install` delivers: one top-level name, ``ats_stress``, that works from any directory.

The wheel is built from a clean copy of the tracked files (as a fresh clone would be) and
installed, without its dependencies, into a new virtual environment; the dependencies come from
the environment running the tests, through a ``.pth`` line. Every command then runs from a
directory that is not the repository.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tracked_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, bin directory of a venv with only that wheel and a path to the test env's deps)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to copy the tracked files from")
    base = tmp_path_factory.mktemp("pkg")
    src = _tracked_copy(base / "clone")
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("ats_stress-*.whl")
    env = base / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    py = env / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # the dependencies (ray, pydantic, ...) from the environment running the tests; its own .pth
    # files (an editable ats_stress among them) are not processed from a path added this way
    Path(site, "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return wheel, env / "bin", Path(site)


def test_the_wheel_installs_one_top_level_name(installed):
    wheel, _, site = installed
    names = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {n for n in names if not n.endswith(".dist-info")} == {"ats_stress"}
    for old in ("cluster", "iommu_actor", "device_actors"):
        assert not (site / old).exists(), f"{old} installed at the top level of site-packages"
    assert (site / "ats_stress" / "iommu_actor" / "policies" / "mainline.py").is_file()


def test_the_installed_command_runs_from_another_directory(installed, tmp_path):
    _, bindir, site = installed
    where = tmp_path / "elsewhere"
    where.mkdir()
    r = subprocess.run([str(bindir / "python"), "-c", "import ats_stress; print(ats_stress.__file__)"],
                       cwd=where, capture_output=True, text=True, check=True)
    assert r.stdout.strip().startswith(str(site / "ats_stress")), r.stdout
    r = subprocess.run([str(bindir / "ats-stress"), "policies"], cwd=where, capture_output=True, text=True)
    assert r.returncode == 0 and "arm-smmu-v3" in r.stdout, r.stderr
    scenario = ROOT / "configs" / "scenarios" / "single-hang.yaml"
    r = subprocess.run([str(bindir / "ats-stress"), "validate", str(scenario)], cwd=where,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "valid" in r.stdout, r.stderr
    # a library scenario that replays a shipped trace: its relative path resolves inside the package
    assert (site / "ats_stress" / "configs" / "traces" / "nic-bursts.txt").is_file()
    r = subprocess.run([str(bindir / "ats-stress"), "validate", "trace-nic-hang"], cwd=where,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "valid" in r.stdout, r.stdout + r.stderr


def test_the_examples_ship_and_copy_out_and_the_copied_policy_runs(installed, tmp_path):
    """`ats-stress examples` lists what ships; `--copy DIR` writes it out, and a copied plug-in
    policy loads from there (as a user who never cloned the repository would use it)."""
    wheel, bindir, site = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(str(p.relative_to(ROOT / "examples")) for p in (ROOT / "examples").rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts)
    assert shipped and all(f"ats_stress/examples/{rel}" in names for rel in shipped), (shipped, sorted(names))
    where = tmp_path / "elsewhere"
    where.mkdir()
    cli = str(bindir / "ats-stress")
    r = subprocess.run([cli, "examples"], cwd=where, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for rel in shipped:
        assert rel in r.stdout, (rel, r.stdout)
    assert str(site / "ats_stress" / "examples") in r.stdout.replace("\n", "")
    r = subprocess.run([cli, "examples", "--copy", "mine"], cwd=where, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for rel in shipped:
        assert (where / "mine" / rel).read_bytes() == (ROOT / "examples" / rel).read_bytes(), rel
    patient = where / "mine" / "policies" / "patient.py"
    r = subprocess.run([cli, "run", "single-hang", "--policy-file", str(patient), "--policy", "patient-smmu",
                        "--set", "duration=0.2", "--set", "chaos=[]", "--set", "expect={}", "-q", "--out", "r"],
                       cwd=where, capture_output=True, text=True)
    assert r.returncode == 0 and "patient-smmu" in r.stdout, r.stdout + r.stderr


def test_from_another_directory_the_library_runs_and_observe_serves_it_with_the_shipped_rules(installed, tmp_path):
    """The issue's "done when": in a fresh venv elsewhere, `ats-stress scenarios`, `ats-stress run
    single-hang --runtime sim` and `ats-stress observe <that run's dir>` work with the shipped
    library, alert rules and dashboard."""
    from test_prometheus import PROMETHEUS, PROMTOOL, Prom, free_port, need

    wheel, bindir, site = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("configs/scenarios/single-hang.yaml", "configs/alerts.yml", "configs/prometheus.yml",
                    "grafana/dashboards/ats-stress.json", "grafana/provisioning/datasources/ats-stress.yaml"):
        assert f"ats_stress/{shipped}" in names, shipped
    where = tmp_path / "elsewhere"
    where.mkdir()
    cli = str(bindir / "ats-stress")
    r = subprocess.run([cli, "scenarios"], cwd=where, capture_output=True, text=True)
    assert r.returncode == 0 and "single-hang" in r.stdout and "the hazard itself" in r.stdout, r.stderr
    assert str(site / "ats_stress" / "configs" / "scenarios") in r.stdout.replace("\n", "")
    r = subprocess.run([cli, "run", "single-hang", "--runtime", "sim"], cwd=where, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = where / "runs" / "single-hang-arm-smmu-v3-sim"
    for name in ("summary.json", "report.md", "latency.png", "cmdq.png", "endpoints.png", "metrics.om"):
        assert (run_dir / name).is_file() and str(run_dir.relative_to(where) / name) in r.stdout, name
    need(PROMETHEUS, "prometheus")
    need(PROMTOOL, "promtool")
    port = free_port()
    log = tmp_path / "observe.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([cli, "observe", str(run_dir), "--port", str(port)], cwd=where, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        prom = Prom(f"http://127.0.0.1:{port}", proc, log)
        prom.wait("observe's prometheus", prom.ready)
        rules = prom.get("/api/v1/rules")["groups"]
        assert rules and len(rules[0]["rules"]) == 4  # the shipped alert rules
        assert str(site / "ats_stress" / "configs" / "alerts.yml") in prom.get("/api/v1/status/config")["yaml"]
        text = log.read_text()
        dashboard = site / "ats_stress" / "grafana" / "dashboards" / "ats-stress.json"
        assert dashboard.is_file() and str(dashboard) in text
        assert "the sim run of single-hang" in text
        to_ms = int(text.split("&to=")[1].split(" ")[0])
        res = prom.get("/api/v1/query", query="max(ats_uaf_exposures_total)", time=to_ms / 1000)["result"]
        assert float(res[0]["value"][1]) > 0  # the run's data, served
    finally:
        proc.terminate()  # observe takes its Prometheus with it
        proc.wait(timeout=30)
