"""The model is sans-IO: no Ray, asyncio, wall clock or Prometheus client inside it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"ray", "asyncio", "time", "prometheus_client", "socket", "threading"}
#: the thin actor shells are the only modules of the model packages allowed to touch Ray/asyncio
SHELLS = {"iommu_actor/actor.py", "device_actors/actor.py"}


def model_modules():
    for pkg in ("iommu_actor", "device_actors"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in SHELLS:
                yield rel, path
    yield "cluster/oracle.py", ROOT / "cluster/oracle.py"


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_model_modules_import_no_ray_asyncio_time_or_prometheus_client():
    checked = 0
    for rel, path in model_modules():
        bad = imported_roots(path) & FORBIDDEN
        assert not bad, f"{rel} imports {sorted(bad)}: the model must stay sans-IO"
        checked += 1
    assert checked >= 10  # the check really looked at the model


def test_policies_cannot_see_ground_truth():
    """Policies import nothing from the oracle, the plan or the endpoint model."""
    for path in sorted((ROOT / "iommu_actor/policies").glob("*.py")):
        roots = imported_roots(path)
        text = path.read_text()
        assert "cluster" not in roots and "device_actors" not in roots, path.name
        assert "oracle" not in text.lower().replace("oracle alone", ""), path.name
