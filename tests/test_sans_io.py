"""The model is sans-IO: no Ray, asyncio, wall clock, Prometheus client or ``cluster/`` inside it,
and the whole tree imports the project by its one name, ``ats_stress``."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"ray", "asyncio", "time", "prometheus_client", "socket", "threading"}
#: the thin actor shells are the only modules of the model packages allowed to touch Ray/asyncio
SHELLS = {"iommu_actor/actor.py", "device_actors/actor.py"}
#: what the shells may use of cluster/: the live event loop, the summary and sampling helpers, and
#: the runtime's trace feeder (the SMMU actor reads a replayed trace; the node gets plain values)
SHELL_MAY_IMPORT = {"ats_stress.cluster.runtime.live", "ats_stress.cluster.results.summary",
                    "ats_stress.cluster.results.sampler", "ats_stress.cluster.runtime.replay"}
#: the names the old layout installed at the top level of site-packages
OLD_TOP_LEVEL = {"cluster", "iommu_actor", "device_actors"}


def model_modules():
    for pkg in ("iommu_actor", "device_actors"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in SHELLS:
                yield rel, path


def imported_modules(path: Path) -> set[str]:
    """Absolute module names ``path`` imports (relative imports are inside its own package)."""
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module)
    return mods


def roots(mods: set[str]) -> set[str]:
    return {m.split(".")[0] for m in mods}


def test_model_modules_import_no_ray_asyncio_time_prometheus_client_or_cluster():
    checked = 0
    for rel, path in model_modules():
        mods = imported_modules(path)
        bad = roots(mods) & FORBIDDEN
        assert not bad, f"{rel} imports {sorted(bad)}: the model must stay sans-IO"
        cluster = sorted(m for m in mods if m.startswith("ats_stress.cluster"))
        assert not cluster, f"{rel} imports {cluster}: the model imports nothing of cluster/"
        checked += 1
    assert checked >= 12  # the check really looked at the model (oracle.py included)
    assert any(rel == "iommu_actor/oracle.py" for rel, _ in model_modules())


def test_actor_shells_use_only_the_event_loop_and_the_summary_and_sampling_helpers_of_cluster():
    for rel in sorted(SHELLS):
        used = {m for m in imported_modules(ROOT / rel) if m.startswith("ats_stress.cluster")}
        assert used and used <= SHELL_MAY_IMPORT, f"{rel} imports {sorted(used - SHELL_MAY_IMPORT)}"


def test_policies_cannot_see_ground_truth():
    """Policies import nothing from the oracle, the plan or the endpoint model."""
    checked = 0
    for path in sorted((ROOT / "iommu_actor/policies").glob("*.py")):
        mods = imported_modules(path)
        text = path.read_text()
        assert not any(m.startswith(("ats_stress.cluster", "ats_stress.device_actors")) for m in mods), path.name
        assert "oracle" not in text.lower().replace("oracle alone", ""), path.name
        checked += 1
    assert checked >= 4


def test_every_module_imports_the_project_as_ats_stress():
    """No module of the package, the tests or the benches imports the old top-level names: with the
    repository as the working directory they would still resolve, and break once installed."""
    checked = 0
    for top in ("cluster", "iommu_actor", "device_actors", "tests", "bench", "grafana"):
        for path in sorted((ROOT / top).rglob("*.py")):
            bad = roots(imported_modules(path)) & OLD_TOP_LEVEL
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)} (use ats_stress.{sorted(bad)[0]})"
            checked += 1
    assert checked >= 40
