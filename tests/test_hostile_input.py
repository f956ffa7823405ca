"""Hostile input never breaks a run: each case exits 2 with one paragraph naming the file, the
field path and what is allowed, and never a traceback."""

import pytest
import yaml
from typer.testing import CliRunner

from ats_stress.cluster.cli import app
from helpers import BASE, overridden

runner = CliRunner()


def with_(**over):
    return yaml.safe_dump(overridden(**over))


HANG = {"at": 1, "fault": "hang", "endpoints": [1]}

# (case id, file content (str or bytes), substrings the error must contain)
CORPUS = [
    ("unknown-top-level-key", with_(colour="blue"), ["unknown field colour (allowed: name, description, seed"]),
    ("unknown-nested-key", with_(topology__nodez=3), ["unknown field topology.nodez (allowed: smmus, endpoints"]),
    ("unknown-step-field", with_(chaos=[{**HANG, "colour": 1}]), ["unknown field chaos.0.colour (allowed: at,",
                                                                  "recover_on_reset"]),
    ("unknown-bound-field", with_(expect={"fences": {"max": 1, "mox": 2}}),
     ["unknown field expect.fences.mox (did you mean 'max'? allowed: min, max, at)"]),
    ("wrong-type", with_(topology__endpoints="many"), ["topology.endpoints"]),
    ("negative-duration", with_(duration="-5s"), ["duration", "cannot be negative"]),
    ("zero-duration", with_(duration=0), ["duration", "greater than 0"]),
    ("negative-rate", with_(workload__unmaps_per_s=-1), ["workload.unmaps_per_s"]),
    ("rate-not-a-number", with_(workload__dma_per_endpoint_per_s="fast"), ["workload.dma_per_endpoint_per_s"]),
    ("zero-latency", with_(workload__inv_latency={"median": 0, "p99": "1ms"}), ["workload.inv_latency.median"]),
    ("endpoint-that-does-not-exist", with_(chaos=[{**HANG, "endpoints": [999]}]), ["chaos.0.endpoints", "no endpoint 999"]),
    ("fault-past-the-end", with_(chaos=[{**HANG, "at": "100s"}]), ["chaos.0.at", "not before the end"]),
    ("more-domains-than-endpoints", with_(topology__domains=64), ["domains (64) cannot exceed endpoints (32)"]),
    ("queue-depth-above-32", with_(topology__invalidate_queue_depth=33), ["topology.invalidate_queue_depth", "32"]),
    ("cmdq-smaller-than-linux-runs", with_(hardware__cmdq_entries=64), ["hardware.cmdq_entries", "128"]),
    ("gerror-irq-cpu-that-does-not-exist", with_(host={"gerror_irq_cpu": 4}),
     ["host.gerror_irq_cpu", "no CPU 4", "idle"]),
    ("gerror-irq-cpu-not-a-cpu", with_(host={"gerror_irq_cpu": "busy"}), ["host.gerror_irq_cpu"]),
    ("unknown-policy", with_(policy={"name": "linux-9000"}), ["policy.name", "unknown policy 'linux-9000'", "quarantine"]),
    ("unknown-policy-parameter", with_(policy={"name": "arm-smmu-v3", "bogus": 1}),
     ["policy.bogus: unknown field", "sync_timeout"]),
    ("policy-parameter-wrong-type", with_(policy={"name": "arm-smmu-v3", "sync_timeout": "soon"}), ["policy.sync_timeout"]),
    ("yaml-list", "- a\n- b\n", ["must be a mapping"]),
    ("yaml-scalar", "just words\n", ["must be a mapping"]),
    ("empty-file", "", ["is empty"]),
    ("binary-file", b"\x7fELF\x02\x01\x01\x00\x00\x00binary", ["binary file"]),
    ("not-utf8", b"name: \xff\xfe\n", ["not UTF-8"]),
    ("huge-count", with_(topology__endpoints=10**30), ["topology.endpoints"]),
    ("huge-duration", with_(duration=1e30), ["duration", "one day"]),
    ("invalid-yaml", "name: [unclosed\nduration: 3\n", ["not valid YAML", "line"]),
    ("unknown-fault", with_(chaos=[{**HANG, "fault": "explode"}]), ["chaos.0", "unknown fault 'explode'", "hang"]),
    ("duplicate-key", with_() + "name: again\n", ["the key 'name' appears twice", "(lines ", "keep the last"]),
    ("duplicate-nested-key", with_().replace("  cpus: 4\n", "  cpus: 4\n  cpus: 2\n"),
     ["the key 'cpus' appears twice"]),
    ("nested-5000-deep", with_() + "chaos: " + "[" * 5000 + "]" * 5000 + "\n", ["nests", "at most 32 levels"]),
    ("nested-100-deep", with_() + "description: " + "[" * 100 + "]" * 100 + "\n",
     ["nests more than 32 levels deep (at description.0.0.0"]),
    ("missing-fault", with_(chaos=[{"at": 1, "endpoints": [1]}]), ["chaos.0", "needs fault"]),
    ("step-without-target", with_(chaos=[{"at": 1, "fault": "hang"}]), ["chaos.0", "needs a target"]),
    ("endpoints-and-count", with_(chaos=[{**HANG, "count": 2}]), ["chaos.0", "either endpoints"]),
    ("slow-without-latency", with_(chaos=[{**HANG, "fault": "slow"}]), ["chaos.0.latency", "missing"]),
    ("p99-below-median", with_(chaos=[{**HANG, "fault": "slow", "latency": {"median": "5ms", "p99": "1ms"}}]),
     ["chaos.0.latency", "p99"]),
    ("flap-hang-longer-than-period", with_(chaos=[{**HANG, "fault": "flap", "period": 1, "hang_for": 2}]),
     ["chaos.0", "hang_for"]),
    ("fraction-above-one", with_(chaos=[{"at": 1, "fault": "hang", "fraction": 1.5}]), ["chaos.0.fraction"]),
    ("probability-above-one", with_(chaos=[{**HANG, "probability": 2}]), ["chaos.0.probability"]),
    ("unknown-expect-figure", with_(expect={"happiness": {"min": 1}}), ["expect", "unknown figure happiness"]),
    ("expect-min-above-max", with_(expect={"fences": {"min": 3, "max": 1}}), ["expect.fences", "min (3) is above max (1)"]),
    ("expect-at-past-end", with_(expect={"fences": {"max": 1, "at": ["50s"]}}), ["expect.fences.at"]),
    ("reset-with-duration", with_(chaos=[{**HANG, "fault": "reset", "duration": 2}]), ["chaos.0", "a reset has no duration"]),
    ("bad-name", with_(name="../../etc/passwd"), ["name"]),
    ("unit-typo", with_(duration="10 parsecs"), ["duration", "not a duration"]),
    ("not-a-number-duration", with_(duration=float("nan")), ["duration", "finite"]),
    ("boolean-duration", with_(duration=True), ["duration"]),
    ("missing-name", yaml.safe_dump({k: v for k, v in BASE.items() if k != "name"}), ["name: required field is missing"]),
    ("smmu-out-of-range", with_(chaos=[{"at": 1, "fault": "hang", "smmu": 3}]), ["chaos.0.smmu", "no SMMU 3"]),
    ("domain-out-of-range", with_(chaos=[{"at": 1, "fault": "hang", "domain": 40}]), ["chaos.0.domain", "no domain 40"]),
    ("count-above-endpoints", with_(chaos=[{"at": 1, "fault": "hang", "count": 500}]), ["chaos.0.count"]),
    ("storm-factor-below-one", with_(chaos=[{"at": 1, "fault": "storm", "factor": 0.5, "duration": 1}]), ["chaos.0.factor"]),
    ("zero-cpus", with_(topology__cpus=0), ["topology.cpus"]),
    ("zero-queues", with_(hardware__command_queues=0), ["hardware.command_queues"]),
    ("extends-not-a-path", with_(extends=["a"]), ["extends"]),
    ("extends-missing-file", with_(extends="nowhere.yaml"), ["extends", "nowhere.yaml", "is neither a scenario file", "nor a scenario of the built-in library"]),
    ("ramp-without-fraction", with_(chaos=[{**HANG, "ramp": {"to": 0.5, "stages": 2, "every": 1}}]), ["chaos.0", "ramp"]),
    # a stage starting after the step's end would be hung for the rest of the run
    ("ramp-ends-before-its-last-stage", with_(chaos=[{"at": 1, "fault": "hang", "fraction": 0.1, "duration": 1,
                                                      "ramp": {"to": 0.4, "stages": 4, "every": 1}}]),
     ["chaos.0", "duration (1s) ends the step before its last ramp stage"]),
    # selectors that narrow each other to nothing: the step would silently do nothing
    ("domain-not-on-that-smmu", with_(topology__smmus=2, chaos=[{"at": 1, "fault": "hang", "domain": 3, "smmu": 0}]),
     ["chaos.0", "selects no endpoint", "smmu 0, domain 3"]),
    ("count-above-the-domain", with_(chaos=[{"at": 1, "fault": "hang", "domain": 1, "count": 9}]),
     ["chaos.0.count", "9 is more than the 8 endpoint(s) on domain 1"]),
    ("count-bounded-by-a-duration", with_(expect={"uaf_exposures": {"max": "5ms"}}),
     ["expect", "uaf_exposures is a count, not a duration"]),
    ("repeat-overlaps", with_(chaos=[{"at": 1, "fault": "hang", "count": 1, "duration": 3, "repeat": {"every": 2, "times": 3}}]),
     ["chaos.0", "shorter than repeat.every"]),
]


@pytest.mark.parametrize("case,content,needles", CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_scenario_gives_exit_2_and_one_clear_paragraph(tmp_path, case, content, needles):
    path = tmp_path / f"{case}.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    for command in (["validate", str(path)], ["run", str(path), "--quiet", "--out", str(tmp_path / "o")]):
        r = runner.invoke(app, command)
        assert r.exit_code == 2, (case, r.output)
        out = r.output.strip()
        assert "Traceback" not in out and (r.exception is None or isinstance(r.exception, SystemExit))
        assert f"{case}.yaml" in out, out
        assert "\n\n" not in out, "one paragraph"
        flat = " ".join(out.split())
        for needle in needles:
            assert needle in flat, (needle, flat)
    assert not (tmp_path / "o" / "summary.json").exists()


def test_the_corpus_is_large():
    assert len(CORPUS) >= 30


def test_cyclic_extends_is_reported_with_the_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nduration: 3\n")
    r = runner.invoke(app, ["validate", str(tmp_path / "a.yaml")])
    assert r.exit_code == 2
    assert "cycle" in r.output and "a.yaml" in r.output and "b.yaml" in r.output


def test_extends_merges_mappings_and_set_overrides_last(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child\ntopology: {cpus: 2}\n")
    r = runner.invoke(app, ["validate", str(tmp_path / "child.yaml"), "--set", "topology.endpoints=64"])
    assert r.exit_code == 0, r.output
    assert "'child', 64 endpoints" in r.output


@pytest.mark.parametrize("target", ["dir", "missing"])
def test_a_directory_or_a_missing_path_is_bad_input(tmp_path, target):
    path = tmp_path if target == "dir" else tmp_path / "nope.yaml"
    r = runner.invoke(app, ["validate", str(path)])
    assert r.exit_code == 2 and "Traceback" not in r.output


@pytest.mark.parametrize("bad_set,needle", [("duration", "--set 'duration'"), ("chaos.9.at=1", "not an index"),
                                            ("name.x=1", "not a mapping")])
def test_bad_set_options_are_bad_input(tmp_path, bad_set, needle):
    path = tmp_path / "s.yaml"
    path.write_text(with_(chaos=[HANG]))
    r = runner.invoke(app, ["validate", str(path), "--set", bad_set])
    assert r.exit_code == 2 and needle in r.output, r.output


@pytest.mark.parametrize("bad_set,needle", [
    ("topology.endpoints=abc", "--set 'topology.endpoints=abc': topology.endpoints: Input should be a valid integer"),
    ("topology.domains=64", "--set 'topology.domains=64': topology: domains (64) cannot exceed endpoints"),
    ("chaos.0.at=100", "--set 'chaos.0.at=100': chaos.0.at: 100 s is not before the end"),
    ("chaos.0.fault=explod", "--set 'chaos.0.fault=explod': chaos.0: unknown fault 'explod'"),
    ("topology={cpus: 2, cpus: 3}", "--set 'topology={cpus: 2, cpus: 3}': the key 'cpus' appears twice"),
])
def test_a_bad_set_value_is_blamed_on_the_set_option_not_the_file(tmp_path, bad_set, needle):
    path = tmp_path / "s.yaml"
    path.write_text(with_(chaos=[HANG]))
    r = runner.invoke(app, ["validate", str(path), "--set", bad_set])
    assert r.exit_code == 2
    flat = " ".join(r.output.split())
    assert needle in flat and "s.yaml" not in flat, flat


def test_a_section_check_the_file_fails_alone_is_the_files_even_with_a_set_inside_that_section(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(with_(topology__domains=64))  # more domains than the 32 endpoints, in the file
    r = runner.invoke(app, ["validate", str(path), "--set", "topology.cpus=4"])
    assert r.exit_code == 2
    flat = " ".join(r.output.split())
    assert "s.yaml: invalid scenario: topology: domains (64) cannot exceed endpoints" in flat, flat
    assert "--set 'topology.cpus=4':" not in flat  # not blamed on the option alone


def test_problems_in_the_file_and_in_a_set_option_are_each_blamed_on_their_source(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(with_(colour="blue"))
    r = runner.invoke(app, ["validate", str(path), "--set", "topology.endpoints=abc"])
    flat = " ".join(r.output.split())
    assert r.exit_code == 2
    assert "s.yaml: invalid scenario: unknown field colour" in flat
    assert "--set 'topology.endpoints=abc': topology.endpoints" in flat


def test_bad_runtime_and_sweep_params_are_bad_input(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert runner.invoke(app, ["run", str(path), "--runtime", "quantum"]).exit_code == 2
    r = runner.invoke(app, ["sweep", str(path), "--param", "policy.sync_timeout"])
    assert r.exit_code == 2 and "--param" in r.output
    r = runner.invoke(app, ["sweep", str(path), "--param", "topology.cpus=0,2"])
    assert r.exit_code == 2 and "topology.cpus" in r.output


# --- every problem in one pass; "did you mean" beside the lists -------------------------------------


def test_validation_reports_every_problem_of_a_file_in_one_pass(tmp_path):
    """Field errors (a chaos step's, an expect figure's) and the checks across fields (an endpoint
    out of range, a step after the end, a misspelled policy) in one paragraph, each with its path."""
    data = overridden(policy={"name": "quarantin"}, expect={"uaf_exposure": {"max": 0}},
                      chaos=[{"at": 2, "fault": "hang", "endpoints": [50], "duration": 3},
                             {"at": 3, "fault": "slow", "endpoints": [1]},  # no latency: a field error
                             {"at": 20, "fault": "hang", "endpoints": [1], "duration": 1}])
    path = tmp_path / "many.yaml"
    path.write_text(yaml.safe_dump(data))
    r = runner.invoke(app, ["validate", str(path)])
    assert r.exit_code == 2 and "\n\n" not in r.output.strip(), r.output
    flat = " ".join(r.output.split())
    for needle in ["chaos.1.latency: required field is missing", "unknown figure uaf_exposure",
                   "chaos.0.endpoints: no endpoint 50 (ids are 0..31)",
                   "chaos.2.at: 20 s is not before the end of the run",  # numbered as in the file
                   "policy.name: unknown policy 'quarantin'"]:
        assert needle in flat, (needle, flat)


def test_a_failing_topology_keeps_the_checks_that_read_it_quiet(tmp_path):
    """The checks across fields are not run against a default put in for a failing section."""
    data = overridden(topology__endpoints="many", chaos=[{"at": 2, "fault": "hang", "endpoints": [20]}])
    path = tmp_path / "topo.yaml"
    path.write_text(yaml.safe_dump(data))
    r = runner.invoke(app, ["validate", str(path)])
    assert r.exit_code == 2 and "topology.endpoints" in r.output and "no endpoint" not in r.output, r.output


@pytest.mark.parametrize("args, needle", [
    (["validate", "sinlge-hang"], "did you mean 'single-hang'"),
    (["run", "single-hang", "--policy", "quarantin", "-q"], "did you mean 'quarantine'? known policies: "),
    (["validate", "single-hang", "--set", "policy.sync_timout=1s"], "did you mean 'sync_timeout'?"),
    (["validate", "single-hang", "--set", "topology.endpoint=3"], "did you mean 'endpoints'? allowed: "),
    (["validate", "single-hang", "--set", "chaos.0.fault=hnag"], "did you mean 'hang'? faults are "),
    (["validate", "single-hang", "--set", "expect.uaf_exposure.max=1"], "did you mean 'uaf_exposures'? figures"),
    (["compare", "single-hang", "--policies", "arm-smmu-v3,quarantin"], "did you mean 'quarantine'?"),
    (["explore", "single-hang", "--check", "uaff"], "did you mean 'uaf'? the properties are"),
])
def test_an_unknown_name_says_did_you_mean_beside_the_list(args, needle):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert needle in " ".join(r.output.split()), r.output


def test_nothing_close_means_no_suggestion():
    r = runner.invoke(app, ["run", "single-hang", "--policy", "zzzzzz", "-q"])
    assert r.exit_code == 2 and "did you mean" not in r.output and "known policies" in r.output


def test_extends_takes_a_library_name(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: single-hang\nname: mine\nseed: 3\n")
    from ats_stress.cluster.scenario import load_scenario

    sc = load_scenario(path)
    assert (sc.name, sc.seed, sc.policy.name) == ("mine", 3, "arm-smmu-v3") and sc.chaos  # single-hang's own
    path.write_text("extends: single-hnag\nname: mine\n")
    r = runner.invoke(app, ["validate", str(path)])
    assert r.exit_code == 2 and "did you mean 'single-hang'" in r.output, r.output
