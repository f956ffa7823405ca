"""Small scenarios built in code, and a recorder for the SMMU's ports."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from ats_stress.cluster.scenario import scenario_from_dict
from ats_stress.cluster.runtime.sim import run_sim

BASE: dict[str, Any] = {
    "name": "t",
    "seed": 1,
    "duration": 10,
    "topology": {"smmus": 1, "endpoints": 32, "domains": 4, "cpus": 4, "endpoints_per_actor": 16,
                 "pages_per_domain": 32, "spare_pages": 64, "atc_entries": 64},
    "hardware": {"atc_inv_completion_timeout": 60, "command_queues": 1},
    "policy": {"name": "arm-smmu-v3"},
    "workload": {"unmaps_per_s": 400, "dma_per_endpoint_per_s": 40,
                 "inv_latency": {"median": "5us", "p99": "50us"}},
}


def overridden(**over: Any) -> dict:
    """A copy of BASE with ``a__b=value`` setting data["a"]["b"]."""
    data = copy.deepcopy(BASE)
    for key, value in over.items():
        node = data
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return data


def scenario(**over: Any):
    return scenario_from_dict(overridden(**over), "<test>")


def run(**over: Any) -> dict:
    return run_sim(scenario(**over))


HANG_5 = [{"at": 2, "fault": "hang", "endpoints": [5], "duration": 6}]


class Recorder:
    """SmmuPorts that records every side effect."""

    def __init__(self):
        self.sent = []
        self.timers = []
        self.syncs = []
        self.errors = []
        self.events = []
        self.ste = []
        self.accesses = []
        self.blocked_list = []

    def send(self, msg):
        self.sent.append(msg)

    def hw_timer(self, at, queue):
        self.timers.append((at, queue))

    def sync_done(self, queue, token):
        self.syncs.append((queue, token))

    def cmdq_error(self, queue, cerror, token, ite_sid):
        self.errors.append((queue, cerror, token, ite_sid))

    def event(self, evt_id, sid, addr):
        self.events.append((evt_id, sid, addr))

    def ste_effective(self, sid, config, eats):
        self.ste.append((sid, config, eats))

    def memory_access(self, sid, addr, pa, tag):
        self.accesses.append((sid, addr, pa, tag))

    def blocked(self, sid, addr, pa, tag):
        self.blocked_list.append((sid, addr, pa, tag))


def sigterm_once_under_way(args: list[str], under_way: Callable[[str], bool], env: dict | None = None) -> str:
    """Run ``ats-stress ARGS`` in a subprocess, wait for its first stderr line (which must show it
    under way), send SIGTERM, and check it exits 130; its stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "ats_stress.cluster.cli", *args],
                            cwd=Path(__file__).resolve().parent.parent, env={**os.environ, **(env or {})},
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()  # synchronise on what it printed, not on time
        assert under_way(line), line
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    return stderr
