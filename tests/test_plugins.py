"""Policies from outside the package: --policy-file, the ats_stress.policies entry points, bad plug-ins."""

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ats_stress.cluster import plugins
from ats_stress.cluster.cli import app
from ats_stress.iommu_actor.policy import get_policy
from helpers import BASE, HANG_5

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "policies" / "patient.py"
runner = CliRunner()


def write(tmp_path, data, name="s.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def one_paragraph_exit_2(r) -> str:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "\n\n" not in r.output.strip(), r.output
    return r.output


def test_the_example_policy_runs_from_its_file_and_never_frees_a_page_early(tmp_path):
    """examples/policies/patient.py: no software timeout, so a 6 s hang stalls unmaps ~6 s and no UAF."""
    sc = write(tmp_path, {**BASE, "chaos": HANG_5, "policy": {"name": "patient-smmu"},
                          "expect": {"uaf_exposures": {"max": 0}}})
    r = runner.invoke(app, ["run", str(sc), "--policy-file", str(EXAMPLE), "--out", str(tmp_path / "o"), "-q"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["policy"] == "patient-smmu" and s["uaf_exposures"] == 0
    assert s["worst_stall_s"] > 5.0 and s["sync_timeouts"] == 0 and s["unmaps"]["incomplete"] == 0


def test_policies_lists_where_each_policy_came_from():
    r = runner.invoke(app, ["policies", "--policy-file", str(EXAMPLE)])
    assert r.exit_code == 0, r.output
    assert "arm-smmu-v3 (built-in)" in r.output
    assert f"patient-smmu ({EXAMPLE.resolve()})" in r.output


def test_policies_says_required_for_a_plug_in_parameter_with_no_default():
    r = runner.invoke(app, ["policies", "--policy-file", str(ROOT / "tests" / "plugins" / "dies_once.py")])
    assert r.exit_code == 0, r.output
    lines = {ln.split()[0]: ln for ln in r.output.splitlines() if ln.startswith("  ")}
    assert "required" in lines["marker"] and "default False" in lines["always"]
    assert "PydanticUndefined" not in r.output


def test_an_unknown_policy_says_how_plug_ins_load():
    r = runner.invoke(app, ["run", str(ROOT / "configs/scenarios/single-hang.yaml"), "--policy", "no-such-policy"])
    assert "--policy-file" in one_paragraph_exit_2(r)


@pytest.mark.parametrize("source, says", [
    ("def broken(:\n    pass\n", "is not valid Python at line 1"),
    ("X = 1\n", "defines no Policy subclass with a name"),
    ("from ats_stress.iommu_actor.policy import Policy\nclass A(Policy):\n    name = 'arm-smmu-v3'\n",
     "collides with the policy of that name from built-in"),
    ("from ats_stress.iommu_actor.policy import Policy\nclass A(Policy):\n    name = 'twin'\nclass B(Policy):\n"
     "    name = 'twin'\n", "classes A and B both take the policy name 'twin'"),
    ("raise RuntimeError('no GPU here')\n", "running it raised RuntimeError: no GPU here"),
])
def test_a_bad_policy_file_is_exit_2_with_one_paragraph(tmp_path, source, says):
    f = tmp_path / "bad_policy.py"
    f.write_text(source)
    r = runner.invoke(app, ["run", str(write(tmp_path, BASE)), "--policy-file", str(f), "-q"])
    out = one_paragraph_exit_2(r)
    assert says in out and "bad_policy.py" in out


def test_a_second_file_taking_a_plugin_name_collides_with_the_first(tmp_path):
    plugins.load([EXAMPLE])
    other = tmp_path / "other.py"
    other.write_text(EXAMPLE.read_text() + "\n# another copy\n")
    r = runner.invoke(app, ["policies", "--policy-file", str(other)])
    assert f"from {EXAMPLE.resolve()}" in one_paragraph_exit_2(r)


def test_a_missing_file_is_exit_2(tmp_path):
    r = runner.invoke(app, ["run", str(write(tmp_path, BASE)), "--policy-file", str(tmp_path / "nope.py")])
    assert "no such file" in one_paragraph_exit_2(r)


def test_entry_point_policies_are_registered_with_their_distribution(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "acme_policies").mkdir(parents=True)
    (site / "acme_policies" / "__init__.py").write_text(textwrap.dedent("""
        from ats_stress.iommu_actor.policy import Policy
        class Acme(Policy):
            name = "acme-ep"
            summary = "from an installed package"
    """))
    dist = site / "acme_policies-1.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-policies\nVersion: 1.2\n")
    (dist / "entry_points.txt").write_text("[ats_stress.policies]\nacme = acme_policies:Acme\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugins, "_entry_points_done", False)
    r = runner.invoke(app, ["policies"])
    assert r.exit_code == 0, r.output
    assert "acme-ep (entry point acme = acme_policies:Acme (acme-policies 1.2))" in r.output
    assert get_policy("acme-ep").summary == "from an installed package"
