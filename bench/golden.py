"""Golden summaries: every library scenario's sim summary, byte for byte, before and after a change.

    python -m bench.golden write DIR [NAME ...]   # record each scenario's summary (minus wall) in DIR
    python -m bench.golden check DIR [NAME ...]   # run them again; exit 1 when any differs, naming the fields

A change meant to make the sim faster must not change what it computes (issue 20): record with the
old tree, check with the new. Each scenario runs in a child process (whatever ``ats_stress`` that
interpreter imports); ``trace.path`` is left out (it names the checkout). About 3 minutes for all.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys
from ats_stress.cluster.scenario import load_scenario
from ats_stress.cluster.scenario.library import resolve
from ats_stress.cluster.runtime.sim import run_sim
s = run_sim(load_scenario(resolve(sys.argv[1]), []))
s.pop("wall", None)
if isinstance(s.get("trace"), dict): s["trace"].pop("path", None)  # where the checkout is
print(json.dumps(s, sort_keys=True))
"""


def names() -> list[str]:
    code = "from ats_stress.cluster.scenario.library import names; print(chr(10).join(names()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in ("write", "check"):
        sys.exit("usage: python -m bench.golden write|check DIR [NAME ...]")
    mode, d = sys.argv[1], Path(sys.argv[2])
    only = sys.argv[3:] or names()
    d.mkdir(parents=True, exist_ok=True)
    bad = 0
    for n in only:
        r = subprocess.run([sys.executable, "-c", CHILD, n], capture_output=True, text=True)
        if r.returncode:
            print(n, "FAILED", r.stderr[-2000:])
            bad += 1
            continue
        text = r.stdout.strip().splitlines()[-1]
        f = d / f"{n}.json"
        if mode == "write":
            f.write_text(text)
            print(n, "written")
        else:
            same = f.read_text() == text
            print(n, "identical" if same else "DIFFERS")
            bad += not same
            if not same:
                a, b = json.loads(f.read_text()), json.loads(text)
                for k in sorted(set(a) | set(b)):
                    if a.get(k) != b.get(k):
                        print("   ", k, str(a.get(k))[:150], "->", str(b.get(k))[:150])
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
