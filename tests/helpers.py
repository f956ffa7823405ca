"""Small scenarios built in code, and a recorder for the SMMU's ports."""

from __future__ import annotations

import copy
from typing import Any

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
