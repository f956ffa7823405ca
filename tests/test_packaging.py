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
