"""Benchmark 10: where else issue 20's 3x could come from, measured beside bench 8's two sides.

    python -m bench.sim_ceiling [--old REF] [--repeat 2]

bench 8 measures this tree's sim against the commit issue 20 starts from. This bench adds the ways
to go further that the issue names or allows, each built from HEAD in a temporary directory and run
as a child process on the same interpreter, old and new alternating, best of ``--repeat``:

- ``cython``: the 13 modules of the model's hot path compiled by Cython as they are (pure-Python
  mode, no type declarations). Needs Cython and a C compiler (``pip install cython``), else skipped.
- ``mypyc``: 9 of them, the model's machinery (the SMMU, its queue and commands, the node, the
  oracle, the endpoints, the sim loop), compiled by mypyc. Needs ``pip install mypy``, else skipped.
  The policies and the CPU model are left out: their mixins read attributes of the class they are
  mixed into, and plug-ins subclass Policy, which mypyc's native classes do not allow.
- ``draws``: bench/experiments/issue20-draws.patch applied, the two changes to how the model draws
  time that issue 20 allows (with a 20-seed test): a healthy device's Invalidate Completion sent
  with a delay instead of a timer of its own, then DMA made in windows of 1 ms and 10 ms (every
  access of the window in one step). These move figures; the bench measures only their speed.

Workloads as bench 8's: the reference scenario (scale-1000-mixed, 60 s, its chaos) and 10,000
endpoints (10 s, no chaos). Prints each variant's wall time, its ratio to REF and to HEAD, its events,
and whether its summary (minus ``wall``) is HEAD's; writes bench/results/sim_ceiling.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, write_result  # noqa: E402
from bench.sim_speed import DEFAULT_OLD, ROOT, RUN, TEN_THOUSAND, best, checkout, child  # noqa: E402

PATCH = ROOT / "bench" / "experiments" / "issue20-draws.patch"
CYTHON_MODULES = ["cluster/runtime/sim.py", "iommu_actor/node.py", "iommu_actor/smmu.py",
                  "device_actors/endpoint.py", "iommu_actor/policies/fence_core.py", "iommu_actor/commands.py",
                  "iommu_actor/policy.py", "iommu_actor/oracle.py", "iommu_actor/stats.py",
                  "iommu_actor/policies/drivers.py", "iommu_actor/policies/fence_state.py", "iommu_actor/cpus.py",
                  "iommu_actor/cmdq.py"]
MYPYC_MODULES = ["iommu_actor/smmu.py", "iommu_actor/cmdq.py", "iommu_actor/commands.py", "iommu_actor/stats.py",
                 "iommu_actor/oracle.py", "iommu_actor/node.py", "device_actors/endpoint.py",
                 "device_actors/pcie.py", "cluster/runtime/sim.py"]
CYTHON_BUILD = """
from setuptools import setup
from Cython.Build import cythonize
setup(ext_modules=cythonize({mods!r}, language_level=3, quiet=True), script_args=["build_ext", "--inplace"])
"""
#: which smmu module a child imported: the compiled variants must not fall back to the .py
CHECK = "import ats_stress.iommu_actor.smmu as m; print(m.__file__)"


def build(kind: str, into: Path) -> str | None:
    """Build variant ``kind`` from HEAD in INTO; None, or why it cannot be built here."""
    checkout("HEAD", into)
    pkg = into / "ats_stress"
    if kind == "cython":
        if importlib.util.find_spec("Cython") is None:
            return "Cython is not installed (pip install cython)"
        code = CYTHON_BUILD.format(mods=[f"ats_stress/{m}" for m in CYTHON_MODULES])
        cmd = [sys.executable, "-c", code]
    elif kind == "mypyc":
        if importlib.util.find_spec("mypyc") is None:
            return "mypyc is not installed (pip install mypy)"
        cmd = [sys.executable, "-m", "mypyc", "--ignore-missing-imports", "--follow-imports=silent",
               *[f"ats_stress/{m}" for m in MYPYC_MODULES]]
    elif kind == "draws":
        cmd = ["git", "apply", str(PATCH)]
        out = subprocess.run(cmd, cwd=pkg, capture_output=True, text=True)
        return None if out.returncode == 0 else f"{PATCH.name} does not apply to HEAD: {out.stderr.strip()}"
    else:
        return None
    print(f"  building {kind} ...", flush=True)
    out = subprocess.run(cmd, cwd=into, capture_output=True, text=True)
    if out.returncode:
        last = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return f"the {kind} build failed: {' / '.join(line.strip() for line in last)}"
    loaded = subprocess.run([sys.executable, "-c", CHECK], cwd=into, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(into))).stdout.strip()
    if not loaded.endswith(".so"):
        return f"the {kind} build left no compiled module behind ({loaded})"
    return None


def run(where: Path, sets: list[str], env: dict[str, str]) -> dict:
    code = RUN.format(where=str(where), path=str(ROOT / "configs" / "scenarios" / "scale-1000-mixed.yaml"),
                      sets=sets)
    return child(code, where, env)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.sim_ceiling", description=__doc__.split("\n")[0])
    ap.add_argument("--old", default=DEFAULT_OLD, help=f"git ref issue 20 starts from (default {DEFAULT_OLD})")
    ap.add_argument("--repeat", type=int, default=2, help="tries of each figure; the best is kept (default 2)")
    args = ap.parse_args(argv if argv is not None else sys.argv[1:])
    draws_env = {"fuse": {"ATS_EXPERIMENT_FUSE": "1"},
                 "fuse+dma1ms": {"ATS_EXPERIMENT_FUSE": "1", "ATS_EXPERIMENT_DMA_WINDOW": "0.001"},
                 "fuse+dma10ms": {"ATS_EXPERIMENT_FUSE": "1", "ATS_EXPERIMENT_DMA_WINDOW": "0.01"}}
    names = {"old": f"{args.old} (issue 20 starts)", "head": "HEAD, pure Python",
             "cython": "HEAD, Cython, 13 modules", "mypyc": "HEAD, mypyc, 9 modules",
             "fuse": "completions without a timer", "fuse+dma1ms": "+ DMA in 1 ms windows",
             "fuse+dma10ms": "+ DMA in 10 ms windows"}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="sim-ceiling-") as tmp:
        dirs = {"old": checkout(args.old, Path(tmp) / "old")}
        for kind in ("head", "cython", "mypyc", "draws"):
            why = build(kind, Path(tmp) / kind)
            if why:
                skipped[kind] = why
                print(f"  {kind}: skipped: {why}", flush=True)
            else:
                dirs[kind] = Path(tmp) / kind
        variants = [(v, dirs[v], {}) for v in ("old", "head", "cython", "mypyc") if v in dirs]
        if "draws" in dirs:
            variants += [(v, dirs["draws"], env) for v, env in draws_env.items()]
        tries: dict[str, dict[str, list[dict]]] = {}
        for _ in range(args.repeat):
            for job, sets in (("reference", []), ("ten_thousand", TEN_THOUSAND)):
                for v, where, env in variants:
                    d = run(where, sets, env)
                    tries.setdefault(job, {}).setdefault(v, []).append(d)
                    print(f"  {job:12s} {names[v]:30s} {d['wall_s']:6.1f} s", flush=True)
    rows: dict[str, dict] = {}
    for job, t in tries.items():
        old, head = best(t["old"])["wall_s"], best(t["head"])["wall_s"]
        digest = t["head"][0]["digest"]
        rows[job] = {v: {"best": best(ds), "vs_old": old / best(ds)["wall_s"], "vs_head": head / best(ds)["wall_s"],
                         "identical": all(d["digest"] == digest for d in ds), "tries": ds}
                     for v, ds in t.items()}
    result = {"benchmark": "sim_ceiling", "old": args.old, "repeat": args.repeat, "skipped": skipped,
              "rows": rows, "machine": machine()}
    print(f"sim ceiling: wall s, best of {args.repeat}; same = summary minus wall as HEAD's")
    titles = {"reference": "scale-1000-mixed, 60 s", "ten_thousand": "10,000 endpoints, 10 s"}
    for job, r in rows.items():
        print(f"  {titles[job]}")
        print(f"    {'variant':32s} {'wall':>6s} {'vs old':>7s} {'vs HEAD':>8s} {'events':>10s} {'MiB':>5s} same")
        for v, x in r.items():
            b = x["best"]
            print(f"    {names[v]:32s} {b['wall_s']:6.2f} {x['vs_old']:6.2f}x {x['vs_head']:7.2f}x"
                  f" {b['events']:>10,} {b['maxrss_kib'] // 1024:>5d} {'yes' if x['identical'] else 'no'}")
    for kind, why in skipped.items():
        print(f"  {kind}: not measured: {why}")
    print(f"  written {write_result('sim_ceiling', result)}")
    return result


if __name__ == "__main__":
    main()
