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


# --- a plug-in's bad action: one paragraph naming the policy, the action, the field, what is allowed ---

BAD_ACTIONS = ROOT / "tests" / "plugins" / "bad_actions.py"


@pytest.mark.parametrize("mistake, says", [
    ("queue", ["Submit(queue=99", "queue=99 is not a command queue", "0..0", "hardware.command_queues"]),
    ("queue-negative", ["Submit(queue=-1", "queue=-1 is not a command queue", "0..0"]),
    ("cmds", ["Submit(queue=0", "cmds[0] is 'not a command' (str)", "iommu_actor/commands.py"]),
    ("unknown-unmap", ["CompleteUnmap(unmap=12345", "no flush the host started", "UnmapStart"]),
    ("twice", ["CompleteUnmap(unmap=0", "unmap=0 was already completed"]),
    ("ste", ["WriteSte(sid=999", "sid=999 is not a stream behind this SMMU", "0..31"]),
    ("reset", ["ResetDevice(sid=999", "sid=999 is not a stream"]),
    ("disable-ats", ["DisableAts(sid=999", "sid=999 is not a stream"]),
    ("presence", ["QueryPresence(sid=999", "sid=999 is not a stream"]),
    ("timer-past", ["SetTimer(at=-0.99", "is in the past", "now + delay"]),
    ("timer-nan", ["SetTimer(at=nan", "is not a time in seconds"]),
    ("timer-str", ["SetTimer(at='soon'", "is not a time in seconds"]),
    ("irq-save", ["LocalIrqSave(cpu=64", "cpu=64 is not a CPU", "0..3", "topology.cpus"]),
    ("irq-restore", ["LocalIrqRestore(cpu=-7", "cpu=-7 is not a CPU"]),
    ("irq-save-negative", ["LocalIrqSave(cpu=-1", "cpu=-1 is not a CPU", "0..3"]),
    ("space-queue", ["WaitCmdqSpace(queue=5", "queue=5 is not a command queue"]),
    ("space-entries", ["WaitCmdqSpace(queue=0, entries=100000", "1..65536 entries"]),
])
def test_a_bad_action_fails_the_run_naming_the_policy_the_action_and_the_field(mistake, says):
    from helpers import run

    plugins.load([BAD_ACTIONS])
    s = run(duration=0.05, policy={"name": "test-bad-actions", "mistake": mistake})
    assert s["status"] == "failed", s.get("error")
    err = s["error"]
    assert err.startswith("PolicyActionError: policy 'test-bad-actions' returned "), err
    assert f"{BAD_ACTIONS}:" in err  # where its handle() is
    for text in says:
        assert text in err, err


def test_a_bad_action_on_the_command_line_is_one_paragraph_exit_3_after_writing(tmp_path):
    sc = write(tmp_path, {**BASE, "duration": 0.05, "policy": {"name": "test-bad-actions"}})
    out = tmp_path / "o"
    r = runner.invoke(app, ["run", str(sc), "--policy-file", str(BAD_ACTIONS), "--out", str(out), "-q"])
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output and "IndexError" not in r.output
    assert "the run failed: PolicyActionError: policy 'test-bad-actions' returned Submit(queue=99" in r.output
    s = json.loads((out / "summary.json").read_text())  # what was gathered is written first
    assert s["status"] == "failed" and s["unmaps"]["arrived"] >= 1
    assert "queue=99 is not a command queue" in (out / "report.md").read_text()


def test_report_md_of_a_plug_in_that_raises_names_its_file_and_line(tmp_path):
    raises = ROOT / "tests" / "plugins" / "raises.py"
    sc = write(tmp_path, {**BASE, "duration": 0.05, "policy": {"name": "test-raises"}})
    r = runner.invoke(app, ["run", str(sc), "--policy-file", str(raises), "--out", str(tmp_path / "o"), "-q"])
    assert r.exit_code == 3, r.output
    line = next(n for n, text in enumerate(raises.read_text().splitlines(), 1) if "raise RuntimeError" in text)
    where = f"(raised at {raises}:{line}, in handle())"
    assert where in r.output
    report = (tmp_path / "o" / "report.md").read_text()
    assert "**The run failed**" in report and "RuntimeError: test-raises: a bug in the policy" in report
    assert where in report


def test_software_timeouts_are_counted_from_what_a_policy_returns():
    """A plug-in that says its timeouts only by CompleteUnmap(err=-ETIMEDOUT): the host counts them
    as software timeouts, and the hung device is one it could have caught (the verdict says so)."""
    from helpers import run

    plugins.load([ROOT / "tests" / "plugins" / "returns_only.py"])
    s = run(duration=4, chaos=HANG_5, policy={"name": "test-returns-only"})
    assert s["status"] == "complete" and s["notes"].get("sync_timeout") is None
    timed_out = s["completion_errors"]["-110"]
    assert timed_out > 0 and s["sync_timeouts"] == timed_out
    assert [m["sid"] for m in s["unfenced_culprits"]] == [5]
    assert f"of {s['endpoints']} streams leaked" in s["verdict"]["line"]


def test_examples_lists_and_copies_the_examples_keeping_an_edited_file(tmp_path):
    r = runner.invoke(app, ["examples"])
    assert r.exit_code == 0 and "policies/patient.py" in r.output and "explore/small.yaml" in r.output, r.output
    edited = tmp_path / "policies" / "patient.py"
    edited.parent.mkdir()
    edited.write_text("# mine\n")
    r = runner.invoke(app, ["examples", "--copy", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "policies" / "impatient.py").read_text() == (ROOT / "examples/policies/impatient.py").read_text()
    assert edited.read_text() == "# mine\n" and "kept" in r.output


def test_the_impatient_example_leaks_past_its_timeout_and_counts_each_timeout():
    """examples/policies/impatient.py (docs/writing-a-policy.md): a 100 ms timeout on a 6 s hang."""
    from helpers import run

    plugins.load([ROOT / "examples" / "policies" / "impatient.py"])
    s = run(duration=4, chaos=HANG_5, policy={"name": "impatient-smmu", "sync_timeout": "100ms"})
    assert s["status"] == "complete" and s["uaf_exposures"] > 0
    assert s["sync_timeouts"] == s["completion_errors"]["-110"] > 0
    assert s["irqs_off_max_s"] == pytest.approx(0.1)


def test_help_documents_the_policy_attributes_duration_and_the_absolute_timer():
    """What a plug-in's author needs is in help(), not only in comments of the source."""
    import pydoc

    from ats_stress.iommu_actor import policy, units

    text = pydoc.render_doc(policy.Policy)
    for attr in ("irqs_off_wait", "irqs_off_windows", "reset_done_on_failure", "hw_reports_ite_sid", "wants_events",
                 "default_flush", "inv_timeout_action", "fence_waits", "can_fence", "poll_timeout",
                 "docs/writing-a-policy.md"):
        assert attr in text, attr
    assert "100ms" in pydoc.render_doc(units.Duration) and "seconds" in pydoc.render_doc(units.Duration)
    timer = pydoc.render_doc(policy.SetTimer)
    assert "absolute" in timer and "now + delay" in timer
    assert "ats-stress examples" in (ROOT / "docs" / "writing-a-policy.md").read_text()
    assert "docs/writing-a-policy.md" in (ROOT / "README.md").read_text()


def test_a_driver_that_reports_its_syncs_keeps_its_own_timeout_count():
    """intel-vtd returns -ETIMEDOUT for a surprise-removed device without a software timeout (it
    reports its syncs with SyncReturned): that return is no software timeout."""
    from helpers import run

    s = run(duration=4, policy={"name": "intel-vtd"}, hardware={"atc_inv_completion_timeout": 1, "command_queues": 1},
            chaos=[{"at": 1, "fault": "removed", "endpoints": [5]}])  # ITE after 1 s: the device is gone
    assert s["sync_returns"] and "sync_timeout" not in s["notes"]
    assert s["completion_errors"].get("-110", 0) > 0, s["completion_errors"]
    assert s["sync_timeouts"] == 0


def test_an_action_the_node_refuses_is_always_a_policy_action_error():
    """The node's own checks (a negative queue, a timer in the past, an unknown SID) raise what
    ``refused`` gives: a PolicyActionError naming the policy even if the diagnosis finds nothing
    more to say, never ``raise None``."""
    from helpers import scenario

    from ats_stress.cluster.runtime.sim import SimWorld
    from ats_stress.cluster.scenario.plan import build_plan
    from ats_stress.iommu_actor.bad_action import PolicyActionError, refused
    from ats_stress.iommu_actor.policy import SetTimer, Submit

    node = SimWorld(build_plan(scenario(duration=0.05))).nodes[0]
    fine = refused(node, SetTimer(1.0, "t"))  # nothing wrong with it by itself
    assert isinstance(fine, PolicyActionError), fine
    assert "the model cannot carry it out" in str(fine) and f"policy {node.policy.name!r}" in str(fine)
    negative = refused(node, Submit(-1, ()))
    assert isinstance(negative, PolicyActionError) and "queue=-1 is not a command queue" in str(negative)
