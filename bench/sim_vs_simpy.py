"""Benchmark 1: our sim event loop against SimPy on the same small model.

The model: N endpoints, C CPUs and one in-order command queue. Each CPU writes a batch of K
ATC_INVs (to random endpoints) and a CMD_SYNC, and waits for its CMD_SYNC before the next batch.
The queue issues a batch's ATC_INVs when CONS reaches it, and its CMD_SYNC completes when all of
them have; only then does CONS move on to the next batch. Endpoints answer after a log-normal
latency. Both versions draw the same random numbers in the same order, so they simulate the same
run; each counts the same model events (batch written, invalidation answered, CMD_SYNC retired)
and the ratio is of model events per wall second.

Run: python -m bench.sim_vs_simpy
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections import deque
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, write_result  # noqa: E402
from ats_stress.cluster.runtime.sim import EventLoop  # noqa: E402

N_ENDPOINTS = 1000
CPUS = 8
K = 16
MEDIAN = 5e-6
SIGMA = math.log(50e-6 / 5e-6) / 2.3263478740408408
HORIZON = 0.5  # simulated seconds


def latency(rng: random.Random) -> float:
    return MEDIAN * math.exp(SIGMA * rng.gauss(0.0, 1.0))


def run_ours(seed: int = 1) -> tuple[int, float]:
    rng = random.Random(seed)
    loop = EventLoop()
    queue: deque = deque()  # batches (cpu,) waiting for CONS
    state = {"busy": False, "pending": 0, "cpu": -1, "events": 0}

    def write_batch(t, cpu):
        state["events"] += 1
        queue.append(cpu)
        if not state["busy"]:
            consume(t)

    def consume(t):
        if not queue:
            state["busy"] = False
            return
        state["busy"] = True
        cpu = queue.popleft()
        state["cpu"] = cpu
        state["pending"] = K
        for _ in range(K):
            rng.randrange(N_ENDPOINTS)  # the endpoint (same draw as the SimPy version)
            loop.at(t + latency(rng), answered, None)

    def answered(t, _):
        state["events"] += 1
        state["pending"] -= 1
        if state["pending"] == 0:
            state["events"] += 1  # the CMD_SYNC retires
            cpu = state["cpu"]
            loop.at(t, write_batch, cpu)  # the CPU writes its next batch
            consume(t)

    for cpu in range(CPUS):
        loop.at(0.0, write_batch, cpu)
    t0 = time.perf_counter()
    loop.run(HORIZON)
    return state["events"], time.perf_counter() - t0


def run_simpy(seed: int = 1) -> tuple[int, float]:
    import simpy

    rng = random.Random(seed)
    env = simpy.Environment()
    queue = simpy.Store(env)
    counter = {"events": 0}

    def endpoint(env, done):
        yield env.timeout(latency(rng))
        counter["events"] += 1
        done.append(1)

    def consumer(env):
        while True:
            cpu, retired = yield queue.get()
            procs = []
            for _ in range(K):
                rng.randrange(N_ENDPOINTS)
                procs.append(env.process(endpoint(env, [])))
            yield simpy.AllOf(env, procs)
            counter["events"] += 1  # the CMD_SYNC retires
            retired.succeed()

    def cpu_proc(env, cpu):
        while True:
            retired = env.event()
            counter["events"] += 1
            yield queue.put((cpu, retired))
            yield retired

    env.process(consumer(env))
    for cpu in range(CPUS):
        env.process(cpu_proc(env, cpu))
    t0 = time.perf_counter()
    env.run(until=HORIZON)
    return counter["events"], time.perf_counter() - t0


def main() -> dict:
    ours_ev, ours_s = min((run_ours() for _ in range(3)), key=lambda r: r[1])
    simpy_ev, simpy_s = min((run_simpy() for _ in range(3)), key=lambda r: r[1])
    ours_rate, simpy_rate = ours_ev / ours_s, simpy_ev / simpy_s
    result = {
        "benchmark": "sim_vs_simpy",
        "model": {"endpoints": N_ENDPOINTS, "cpus": CPUS, "invs_per_sync": K, "simulated_s": HORIZON},
        "ours": {"model_events": ours_ev, "wall_s": ours_s, "events_per_s": ours_rate},
        "simpy": {"model_events": simpy_ev, "wall_s": simpy_s, "events_per_s": simpy_rate},
        "ratio_ours_to_simpy": ours_rate / simpy_rate,
        "target": ">= 1.0",
        "machine": machine(),
    }
    print(f"sim vs SimPy ({N_ENDPOINTS} endpoints, {CPUS} CPUs, {K} ATC_INV per CMD_SYNC, {HORIZON:g} s simulated)")
    print(f"  ours : {ours_ev:>9} model events in {ours_s:.3f} s = {ours_rate:,.0f}/s")
    print(f"  SimPy: {simpy_ev:>9} model events in {simpy_s:.3f} s = {simpy_rate:,.0f}/s")
    print(f"  ratio ours/SimPy = {result['ratio_ours_to_simpy']:.2f}x (target >= 1.0x)")
    write_result("sim_vs_simpy", result)
    return result


if __name__ == "__main__":
    main()
