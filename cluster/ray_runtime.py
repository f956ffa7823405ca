"""The ``ray`` runtime: the same sans-IO model, driven by live Ray actors on wall-clock time.

- One SMMU actor per SMMU (iommu_actor/actor.py: an SmmuNode and its Oracle) and one async
  device actor per plan group (device_actors/actor.py: an EndpointGroup). Device actors are
  spread over the cluster's nodes (SPREAD scheduling); SMMU actors stay on the driver's node
  (the host), node affinity. The summary records who ran where.
- Every message crosses as msgpack batches, at most one in flight per (sender, destination), so
  each direction is FIFO (cluster/live.py).
- Time: scenario seconds = (wall - t0) / runtime.time_scale, with a common t0 chosen by the driver.
- Before the run the driver measures the SMMU <-> device-actor round trip and works out the
  transport floor: an in-order queue retires at most one CMD_SYNC per round trip, so the
  runtime carries at most time_scale / round_trip syncs per scenario second per queue. It warns
  when the scenario asks for more, watches lag during the run, and marks a saturated run's
  verdicts (summary["transport"]["saturated"]), so transport overload never passes for a device
  fault.
- Ray-level chaos: ``kill_actor`` (ray.kill of the device actors hosting the selected endpoints)
  and ``kill_node`` (a node_killer callable, or by default every device actor on that node).

``run_ray(sc, address=..., out_dir=..., quiet=...)`` returns the summary dict (same fields as the
``sim`` runtime's plus ``placement``, ``transport`` and ``lost``). Bad addresses, a dead cluster
or actors that will not start raise RuntimeInputError (one paragraph; the CLI exits 2).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from .config import Scenario, ScenarioError
from .plan import Plan, build_plan
from .summary import build_summary, check_expectations, checkpoints, percentile, write_json

ROOT = Path(__file__).resolve().parent.parent

#: device actors ask for this much CPU (so hundreds fit on 2 cores, and a head started with
#: --num-cpus=0 hosts none); SMMU actors ask for none
DEVICE_NUM_CPUS = 0.01
#: start-up round trips measured per (SMMU actor, device actor) pair
RTT_SAMPLES = 20
#: the driver looks at the actors this often (wall s)
POLL_EVERY = 0.5
#: a run's verdicts are not trusted when transport lag reaches this fraction of the policy's
#: software timeout (scenario s)
STALL_FRACTION = 0.25
#: consecutive ~3 s windows of live load above the ceiling that make a run saturated
SUSTAINED = 3


class RuntimeInputError(Exception):
    """The live runtime cannot run here (address, cluster, actors). One paragraph for a person."""


def remote(cls: type, **options: Any):
    """The one place ``ray.remote`` is applied to an actor shell."""
    import ray

    return ray.remote(**options)(cls)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- joining a cluster -------------------------------------------------------------------------------

JOBS_HINT = (
    "{addr} is the Ray dashboard / Jobs API address; a driver cannot join a cluster through it. "
    "Submit the run as a Ray Job instead: `ray job submit --address {addr} --working-dir . -- "
    "ats-stress run SCENARIO --runtime ray` (inside a job, ats-stress joins the cluster by itself), "
    "or join directly with --address ray://HEAD:10001 (Ray Client) or --address HEAD:6379 (the GCS "
    "address, from a machine of the cluster), or --address auto on a cluster node."
)


def _tcp_check(host: str, port: int, what: str, address: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=3.0):
            pass
    except OSError as exc:
        raise RuntimeInputError(
            f"--address {address}: nothing answers at {host}:{port} ({exc.strerror or exc}); no {what} "
            "is reachable there. Check that the cluster is up (`ray status` on the head node) and the "
            "host and port, or leave --address out to run on an embedded local Ray.") from None


def _split_host_port(hostport: str, address: str, default_port: int | None) -> tuple[str, int]:
    host, sep, port = hostport.rpartition(":")
    if not sep:
        host, port = hostport, ""
    if not port:
        if default_port is None:
            raise RuntimeInputError(
                f"--address {address}: give host:port (for example 10.0.0.1:6379), ray://host:10001, "
                "auto, or leave --address out to run on an embedded local Ray.")
        port = str(default_port)
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
        raise RuntimeInputError(
            f"--address {address}: not a valid address. Use auto (the cluster this machine belongs to), "
            "ray://HEAD:10001 (Ray Client), HEAD:6379 (GCS), or leave --address out for an embedded local Ray.")
    return host.strip("[]"), int(port)


def connect(address: str | None, *, num_cpus: int | None = None) -> bool:
    """Join or start Ray. Returns True when this call started the connection (the caller shuts it
    down), False when Ray was already initialised (tests, embedding)."""
    import ray

    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    a = None if address is None else address.strip()
    if a == "":
        raise RuntimeInputError("--address is empty: give auto, ray://HEAD:10001, HEAD:6379, or leave it out "
                                "for an embedded local Ray.")
    if a is not None:
        low = a.lower()
        if low.startswith(("http://", "https://")):
            raise RuntimeInputError(JOBS_HINT.format(addr=a))
        if low == "auto":
            pass
        elif low.startswith("ray://"):
            host, port = _split_host_port(a[len("ray://"):].rstrip("/"), a, 10001)
            _tcp_check(host, port, "Ray Client server", a)
        elif "://" in a:
            raise RuntimeInputError(
                f"--address {a}: unknown scheme {urlparse(a).scheme!r}. Use auto, ray://HEAD:10001 "
                "(Ray Client), HEAD:6379 (GCS), or http://HEAD:8265 with `ray job submit`.")
        else:
            host, port = _split_host_port(a, a, None)
            _tcp_check(host, port, "Ray GCS", a)
    if ray.is_initialized():  # already connected (tests, embedding): use it as it is
        return False
    try:
        old = signal.getsignal(signal.SIGTERM)
    except ValueError:
        old = None
    try:
        if a is None and not os.environ.get("RAY_ADDRESS"):
            ray.init(address="local", num_cpus=num_cpus or max(2, os.cpu_count() or 2),
                     include_dashboard=False, object_store_memory=256 * 1024 * 1024,
                     runtime_env={"env_vars": {"PYTHONPATH": _pythonpath()}}, **kwargs)
        else:  # an address, or RAY_ADDRESS set (inside a Ray Job, ray.init() joins the job's cluster)
            ray.init(address=a, **kwargs)
    except RuntimeInputError:
        raise
    except Exception as exc:  # ConnectionError, TimeoutError, RuntimeError from ray.init
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"--address {a}" if a else ("RAY_ADDRESS=" + os.environ["RAY_ADDRESS"] if os.environ.get("RAY_ADDRESS")
                                           else "the embedded local Ray")
        raise RuntimeInputError(
            f"{where}: could not start or join Ray ({first}). Check that the cluster is up and reachable "
            "(`ray status`), that its Ray and Python versions match this machine's, or leave --address "
            "out to run on an embedded local Ray.") from None
    finally:
        if old is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, old)  # ray.init replaces it; the CLI's turns SIGTERM into Ctrl-C
    return True


def _pythonpath() -> str:
    cur = os.environ.get("PYTHONPATH", "")
    return str(ROOT) + (os.pathsep + cur if cur else "")


# --- transport floor ----------------------------------------------------------------------------------


def policy_timeout(sc: Scenario) -> float:
    """The software timeout that turns a late device into a verdict (scenario s): the policy's
    CMD_SYNC timeout, or the hardware ATC completion timeout when the policy has none (VT-d)."""
    from iommu_actor.policy import HwInfo, make_policy

    pol = make_policy(sc.policy.name, sc.policy.params(),
                      HwInfo(sc.hardware.command_queues, sc.topology.cpus, sc.topology.invalidate_queue_depth))
    t = getattr(pol, "sync_timeout", None)
    if callable(t):
        t = t()
    if t is None:
        hooks = getattr(pol, "hooks", None)
        t = getattr(hooks, "sync_timeout", None)
    return float(t) if t else float(sc.hardware.atc_inv_completion_timeout)


def probe_syncs_per_unmap(sc: Scenario) -> float | None:
    """The policy's CMD_SYNCs per unmap on this scenario without faults, from a short sim run."""
    rate = sc.workload.unmaps_per_s
    if rate <= 0:
        return None
    from .sim import run_sim

    dur = min(sc.duration, 1.0, max(0.05, 400.0 / rate))
    probe = sc.model_copy(update={"chaos": [], "expect": {}, "duration": dur})
    s = run_sim(probe)
    return s["syncs_per_unmap"]


def transport_ceiling(sc: Scenario, rtt_wall: float, spu: float | None) -> dict[str, Any]:
    top = sc.topology
    scale = sc.runtime.time_scale
    active = min(top.cpus, sc.hardware.command_queues)  # CPU c submits to queue c mod n
    per_queue = scale / rtt_wall if rtt_wall > 0 else math.inf  # syncs per scenario second
    total = per_queue * active * top.smmus
    demand_unmaps = sc.workload.unmaps_per_s
    unmaps = total / spu if spu else None
    demand_syncs = demand_unmaps * spu if spu else 0.0
    return {
        "round_trip_scenario_s": rtt_wall / scale,
        "syncs_per_s_per_queue": per_queue,
        "queues_in_use_per_smmu": active,
        "syncs_per_s": total,
        "syncs_per_unmap": spu,
        "unmaps_per_s": unmaps,
        "demand_unmaps_per_s": demand_unmaps,
        "demand_syncs_per_s": demand_syncs,
        "load": (demand_syncs / total) if total and math.isfinite(total) else 0.0,
    }


def _knobs() -> str:
    return ("raise runtime.time_scale (e.g. --set runtime.time_scale=N), lower workload.unmaps_per_s / "
            "workload.dma_per_endpoint_per_s, or spread the load over more hardware.command_queues or "
            "topology.smmus")


# --- the live world ---------------------------------------------------------------------------------


class _Actor:
    __slots__ = ("kind", "index", "handle", "info", "alive", "endpoints", "last", "lost_cause")

    def __init__(self, kind: str, index: int, handle, endpoints: list[int]):
        self.kind = kind
        self.index = index
        self.handle = handle
        self.info: dict[str, Any] = {}
        self.alive = True
        self.endpoints = endpoints
        self.last: dict[str, Any] | None = None  # latest progress()
        self.lost_cause: str | None = None


class LiveRun:
    def __init__(self, sc: Scenario, plan: Plan, *, quiet: bool, metrics_bind: str | None,
                 node_killer: Callable[[str], Any] | None, startup_timeout: float,
                 device_options: dict | None, smmu_options: dict | None):
        self.sc = sc
        self.plan = plan
        self.quiet = quiet
        self.metrics_bind = metrics_bind
        self.targets_file: Path | None = None  # file_sd targets, kept current (write_targets)
        self.node_killer = node_killer
        self.startup_timeout = startup_timeout
        self.device_options = device_options or {}
        self.smmu_options = smmu_options or {}
        self.smmus: list[_Actor] = []
        self.devices: list[_Actor] = []
        self.lost_actors: list[dict] = []
        self.lost_nodes: list[dict] = []
        self.lost_endpoints: dict[int, float] = {}
        self.warnings: list[str] = []
        self.failure: str | None = None
        self.t0 = 0.0
        self.scale = sc.runtime.time_scale
        self.rtt: list[float] = []
        self.ceiling: dict[str, Any] = {}
        self.stall_budget = STALL_FRACTION * policy_timeout(sc)
        self.max_lag_wall = 0.0
        self.saturated_during = False
        self.checks = checkpoints(sc)  # expect ... at: scenario times to check bounds during the run
        self.checked: list[dict] = []
        self.echo_window: list[float] = []
        self.echo_checked = 0.0
        self.live_loads: list[float] = []
        self.driver_node: str | None = None
        self.started_wall = time.time()

    # set-up ---------------------------------------------------------------------------------------

    def create(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from device_actors.actor import DeviceActor
        from iommu_actor.actor import SmmuActor

        sc, plan = self.sc, self.plan
        try:
            self.driver_node = ray.get_runtime_context().get_node_id()
        except Exception:
            self.driver_node = None
        smmu_opts: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0, "max_concurrency": 1000}
        if self.driver_node:
            smmu_opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(self.driver_node, soft=False)
        smmu_opts.update(self.smmu_options)
        dev_opts: dict[str, Any] = {"num_cpus": DEVICE_NUM_CPUS, "max_restarts": 0, "max_concurrency": 1000,
                                    "scheduling_strategy": "SPREAD"}
        dev_opts.update(self.device_options)
        SmmuCls = remote(SmmuActor, **smmu_opts)
        DevCls = remote(DeviceActor, **dev_opts)
        hw = {"command_queues": sc.hardware.command_queues, "cpus": sc.topology.cpus,
              "invalidate_queue_depth": sc.topology.invalidate_queue_depth}
        from .reports import new_run_id

        base = {"run": new_run_id(sc), "scenario": sc.name, "policy": sc.policy.name}
        for spec in plan.nodes:
            sids = set(spec.sids)
            group_sids: dict[int, list[int]] = {}
            for sid in spec.sids:
                group_sids.setdefault(plan.sid_group[sid], []).append(sid)
            h = SmmuCls.remote(spec, sc.policy.name, sc.policy.params(), hw,
                               {s: t for s, t in plan.fault_starts.items() if s in sids},
                               dict(plan.sid_group), group_sids, sc.hardware.flr_time,
                               metrics_bind=self.metrics_bind,
                               labels={**base, "kind": "smmu", "index": str(spec.index)})
            self.smmus.append(_Actor("smmu", spec.index, h, sorted(sids)))
        lat = sc.workload.inv_latency
        gkw = {"atc_entries": sc.topology.atc_entries, "pages_per_domain": sc.topology.pages_per_domain,
               "dma_per_endpoint_per_s": sc.workload.dma_per_endpoint_per_s,
               "inv_latency_median": lat.median, "inv_latency_p99": lat.p99,
               "flr_time": sc.hardware.flr_time, "seed": plan.seed}
        for g in plan.groups:
            sid_node = {sid: plan.sid_node[sid] for sid, _ in g.endpoints}
            h = DevCls.remote(g.index, [list(e) for e in g.endpoints], gkw, sid_node,
                              metrics_bind=self.metrics_bind,
                              labels={**base, "kind": "device", "index": str(g.index)})
            self.devices.append(_Actor("device", g.index, h, [sid for sid, _ in g.endpoints]))
        self._await_ready()
        dev_handles = [d.handle for d in self.devices]
        smmu_handles = [s.handle for s in self.smmus]
        if sc.runtime.transport == "stream":
            # every actor listens on its node; each then opens one TCP connection per peer, and
            # batches travel as frames on it instead of one Ray call each (cluster/live.py)
            token = secrets.token_bytes(16)
            addrs = self._get([a.handle.listen.remote(token) for a in self.smmus + self.devices], 60,
                              "listen (the stream transport)")
            smmu_addrs, dev_addrs = addrs[:len(self.smmus)], addrs[len(self.smmus):]
            self._get([s.handle.connect.remote(dev_handles, dev_addrs, token) for s in self.smmus]
                      + [d.handle.connect.remote(smmu_handles, smmu_addrs, token) for d in self.devices], 60,
                      "connect (the stream transport: every actor must reach the other actors' nodes on any "
                      "TCP port; where a firewall forbids it, set runtime.transport: ray)")
        else:
            self._get([s.handle.connect.remote(dev_handles) for s in self.smmus]
                      + [d.handle.connect.remote(smmu_handles) for d in self.devices], 60, "connect")

    def _await_ready(self) -> None:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        everyone = self.smmus + self.devices
        refs = {a.handle.ready.remote(): a for a in everyone}
        deadline = time.time() + self.startup_timeout
        pending = list(refs)
        while pending:
            left = deadline - time.time()
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=max(0.0, left))
            for ref in done:
                a = refs[ref]
                try:
                    a.info = ray.get(ref)
                except (RayActorError, Exception) as exc:
                    cause = _last_line(exc)
                    self.kill_all()
                    raise RuntimeInputError(
                        f"the {a.kind} actor {a.index} could not start ({cause}). The project must be "
                        "importable on every node of the cluster (install it in the image or the "
                        "`ray up` setup commands, or submit with `ray job submit --working-dir .`), and "
                        "a metrics bind address must be free.") from None
            if pending and time.time() >= deadline:
                a = refs[pending[0]]
                self.kill_all()
                opts = self.device_options if a.kind == "device" else self.smmu_options
                raise RuntimeInputError(
                    f"{len(pending)} of {len(refs)} actors (first: the {a.kind} actor {a.index}) did not start "
                    f"within {self.startup_timeout:g} s. The cluster may lack the resources they ask for "
                    f"(device actors: num_cpus={opts.get('num_cpus', DEVICE_NUM_CPUS)} each, plus "
                    f"{opts.get('resources') or 'no custom resources'}), or its nodes cannot start workers; "
                    "check `ray status` and the raylet logs.") from None
        del GetTimeoutError

    def _get(self, refs, timeout: float, what: str):
        import ray

        try:
            return ray.get(refs, timeout=timeout)
        except Exception as exc:
            self.kill_all()
            raise RuntimeInputError(f"the actors failed during {what} ({_last_line(exc)}); the cluster "
                                    "may be overloaded or losing nodes (check `ray status`).") from None

    def measure(self, spu: float | None) -> None:
        import ray

        sample = [(1, 0, 3, 1000, 0)] * 16  # a downstream batch of 16 Invalidate Requests
        per = max(3, RTT_SAMPLES // max(1, len(self.smmus)))
        # warm every pair once, then measure
        self._get([s.handle.measure_rtt.remote(1, sample) for s in self.smmus], 60, "the round-trip warm-up")
        res = self._get([s.handle.measure_rtt.remote(per, sample) for s in self.smmus], 120,
                        "the round-trip measurement")
        self.rtt = sorted(x for r in res for x in r)
        p50 = percentile(self.rtt, 0.5) or 0.0
        self.ceiling = transport_ceiling(self.sc, p50, spu)
        c = self.ceiling
        del ray
        if c["load"] > 1.0:
            need = self.scale * c["load"] * 1.25
            self._warn(
                f"transport floor: the SMMU<->device-actor round trip is {p50 * 1e3:.2f} ms wall "
                f"({c['round_trip_scenario_s'] * 1e3:.3f} ms scenario at time_scale {self.scale:g}), so a "
                f"queue retires at most {c['syncs_per_s_per_queue']:.0f} CMD_SYNC/s; this scenario asks for "
                f"{c['demand_syncs_per_s']:.0f} syncs/s over {c['queues_in_use_per_smmu']} queue(s) x "
                f"{self.sc.topology.smmus} SMMU(s) ({c['syncs_per_unmap']:.3g} syncs per unmap), "
                f"{c['load']:.1f}x what the live runtime can carry. Unmaps will queue up behind the "
                f"transport, not behind devices; {_knobs()} (time_scale >= {need:.3g} should do).")
        p99 = percentile(self.rtt, 0.99) or 0.0
        if p99 / self.scale > self.stall_budget:
            self._warn(
                f"transport floor: a round trip ({p99 * 1e3:.1f} ms wall p99) is {p99 / self.scale:.3g} s of "
                f"scenario time, beyond {STALL_FRACTION:g} x the policy's software timeout "
                f"({self.stall_budget / STALL_FRACTION:g} s): transport delay could pass for a late device. "
                f"{_knobs()}.")

    def _warn(self, text: str) -> None:
        self.warnings.append(text)
        _say(f"warning: {text}")

    # running --------------------------------------------------------------------------------------

    def start(self) -> None:
        import ray

        lead = 1.0 + 0.02 * (len(self.smmus) + len(self.devices))
        self.t0 = time.time() + lead
        dev_actions: dict[int, list] = {}
        for a in self.plan.actions:
            if a.fault in ("kill_actor", "kill_node"):
                continue
            for sid in a.sids:
                dev_actions.setdefault(self.plan.sid_group[sid], {}).setdefault(id(a), (a, []))[1].append(sid)
        refs = [s.handle.start.remote(self.t0, self.scale, self.sc.duration, []) for s in self.smmus]
        for d in self.devices:
            acts = [(a.at, a.step, a.phase, a.fault, tuple(sids), a.params)
                    for a, sids in dev_actions.get(d.index, {}).values()]
            refs.append(d.handle.start.remote(self.t0, self.scale, self.sc.duration, acts))
        self._get(refs, 60, "start")
        del ray
        if time.time() > self.t0:
            self._warn(f"the actors were told to start {time.time() - self.t0:.2f} s wall late; "
                       "the first timers fire late")

    def scenario_now(self) -> float:
        return (time.time() - self.t0) / self.scale

    def run(self) -> str:
        """Drive chaos kills and progress until the end; return the status."""
        sc = self.sc
        end_wall = self.t0 + sc.duration * self.scale
        kills = [a for a in self.plan.actions if a.fault in ("kill_actor", "kill_node") and a.phase == "start"]
        tty = sys.stderr.isatty()
        show_every = 1.0 if tty else 5.0
        next_poll = time.time() + POLL_EVERY
        next_show = self.t0 + show_every
        prev = (0.0, 0)
        timeouts = 0
        while True:
            now = time.time()
            if now >= end_wall:
                break
            while kills and self.t0 + kills[0].at * self.scale <= now:
                self._chaos_kill(kills.pop(0))
            if now >= next_poll:
                next_poll = now + POLL_EVERY
                ok = self._poll()
                timeouts = 0 if ok else timeouts + 1
                if self.failure:
                    return "failed"
                if timeouts >= 6:
                    self.failure = "the cluster stopped answering (progress polls timed out for 30 s)"
                    return "failed"
                if not self.quiet and now >= next_show and now >= self.t0:
                    next_show = now + show_every
                    prev = self._show(prev)
            while self.checks and self.scenario_now() >= self.checks[0]:
                self._checkpoint(self.checks.pop(0))
            wake = min(end_wall, next_poll, self.t0 + kills[0].at * self.scale if kills else end_wall)
            time.sleep(max(0.0, min(0.25, wake - time.time())))
        # let every actor reach the end of scenario time
        self._wait_done(timeout=max(10.0, 2.0 * self.scale))
        if not self.quiet:
            self._show(prev)
        return "complete"

    def _poll(self) -> bool:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        live = [a for a in self.smmus + self.devices if a.alive]
        refs = [a.handle.progress.remote() for a in live]
        try:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=5.0)
        except Exception as exc:
            self.failure = f"the cluster failed ({_last_line(exc)})"
            return False
        ready_set = set(ready)
        all_ok = len(ready) == len(refs)
        t = self.scenario_now()
        for a, ref in zip(live, refs):
            if ref not in ready_set:
                continue
            try:
                p = ray.get(ref)
            except (RayActorError, GetTimeoutError, Exception) as exc:
                self._actor_died(a, t, f"died ({_last_line(exc)})")
                continue
            a.last = p
            if p.get("echo_wall_s"):
                self.echo_window.extend(p["echo_wall_s"])
            if p["errors"]:
                self.failure = f"{a.kind} actor {a.index}: {p['errors'][0]}"
            lag = p["lag_wall_s"]
            if lag > self.max_lag_wall:
                self.max_lag_wall = lag
            if lag / self.scale > self.stall_budget and t < self.sc.duration:
                if not self.saturated_during:
                    self._warn(
                        f"transport saturated at t={t:.2f} s: the {a.kind} actor {a.index} ran "
                        f"{lag * 1e3:.0f} ms wall ({lag / self.scale:.3g} s scenario) behind, beyond "
                        f"{STALL_FRACTION:g} x the policy's software timeout; sync timeouts and fences from "
                        f"here on may be transport delay, not device faults. {_knobs()}.")
                self.saturated_during = True
        self._check_live_load(t)
        return all_ok

    def _check_live_load(self, t: float) -> None:
        """Every few seconds: is the device round trip measured right now (the probes riding the
        real batches) too slow for the CMD_SYNC rate the scenario asks for?"""
        now = time.time()
        if now - self.echo_checked < 3.0 or len(self.echo_window) < 5 or t >= self.sc.duration:
            return
        window, self.echo_window = self.echo_window, []
        self.echo_checked = now
        mean = sum(window) / len(window)
        live = transport_ceiling(self.sc, mean, self.ceiling.get("syncs_per_unmap"))
        self.live_loads.append(live["load"])
        # a burst (one window) only queues unmaps for a moment; a sustained overload (SUSTAINED
        # windows in a row, ~10 s wall) means the run is measuring the transport
        recent = self.live_loads[-SUSTAINED:]
        if len(recent) == SUSTAINED and min(recent) > 1.0:
            if not self.saturated_during:
                self._warn(
                    f"transport saturated at t={t:.2f} s: a device round trip now takes {mean * 1e3:.1f} ms wall "
                    f"({mean / self.scale * 1e3:.2f} ms scenario), so a queue retires at most "
                    f"{live['syncs_per_s_per_queue']:.0f} CMD_SYNC/s against the "
                    f"{live['demand_syncs_per_s']:.0f}/s the scenario asks for ({live['load']:.1f}x): unmaps "
                    f"now wait for the transport, not for the devices. {_knobs()}.")
            self.saturated_during = True

    def write_targets(self) -> None:
        """The file_sd targets file, rewritten (atomically) whenever the set of live actors changes."""
        if self.targets_file is not None:
            from .metrics import write_file_sd

            write_file_sd(self.targets_file, self.targets(alive_only=True))

    def _actor_died(self, a: _Actor, t: float, cause: str) -> None:
        if not a.alive:
            return
        self._record_lost(a, t, cause)
        if a.kind == "smmu":
            self.failure = f"SMMU actor {a.index} {cause}"
            return
        self._endpoints_lost(a, t)

    def _endpoints_lost(self, a: _Actor, t: float) -> None:
        for sid in a.endpoints:
            self.lost_endpoints.setdefault(sid, t)
        for s in self.smmus:
            if s.alive:
                s.handle.endpoints_lost.remote(a.index, t)

    def _kill_device(self, a: _Actor, t: float, cause: str) -> None:
        import ray

        if not a.alive:
            return
        try:
            ray.kill(a.handle, no_restart=True)
        except Exception:
            pass
        self._record_lost(a, t, cause)
        self._endpoints_lost(a, t)

    def _record_lost(self, a: _Actor, t: float, cause: str) -> None:
        """``a`` is gone: out of the Prometheus targets, into the summary's ``lost``."""
        a.alive = False
        self.write_targets()
        a.lost_cause = cause
        self.lost_actors.append({"kind": a.kind, "index": a.index, "node_id": a.info.get("node_id"),
                                 "at_s": t, "cause": cause, "endpoints": len(a.endpoints)})

    def _chaos_kill(self, action) -> None:
        groups = sorted({self.plan.sid_group[s] for s in action.sids})
        t = action.at
        if action.fault == "kill_actor":
            for g in groups:
                self._kill_device(self.devices[g], t, f"kill_actor (chaos.{action.step})")
            if not self.quiet:
                _say(f"  chaos.{action.step}: killed device actor(s) {groups} at t={t:g} s")
            return
        nodes = sorted({self.devices[g].info.get("node_id") for g in groups if self.devices[g].alive} - {None})
        smmu_nodes = {s.info.get("node_id") for s in self.smmus}
        for node in nodes:
            on_node = [d for d in self.devices if d.alive and d.info.get("node_id") == node]
            ip = on_node[0].info.get("node_ip") if on_node else None
            if self.node_killer is not None and node not in smmu_nodes and node != self.driver_node:
                how = "node killed by the node killer"
                try:
                    self.node_killer(node)
                except Exception as exc:
                    how = f"node killer failed ({_last_line(exc)}); its device actors were killed instead"
                for d in on_node:
                    self._kill_device(d, t, f"kill_node (chaos.{action.step})")
            else:
                why = ("no node killer was given" if self.node_killer is None
                       else "it hosts the driver or the SMMU actors (the host itself)")
                how = f"device actors killed, node left up ({why})"
                for d in on_node:
                    self._kill_device(d, t, f"kill_node (chaos.{action.step})")
                _say(f"  chaos.{action.step}: kill_node: {why}: killed the {len(on_node)} device actor(s) on "
                     f"node {node[:12]} instead; the node itself stays up")
            self.lost_nodes.append({"node_id": node, "node_ip": ip, "at_s": t, "how": how,
                                    "device_actors": [d.index for d in on_node],
                                    "endpoints": sum(len(d.endpoints) for d in on_node)})
            if not self.quiet:
                _say(f"  chaos.{action.step}: node {node[:12]} lost at t={t:g} s "
                     f"({len(on_node)} device actor(s), {sum(len(d.endpoints) for d in on_node)} endpoints)")

    def _show(self, prev: tuple[float, int]) -> tuple[float, int]:
        t = max((a.last or {}).get("t", 0.0) for a in self.smmus)
        cmds = sum((a.last or {}).get("commands", 0) for a in self.smmus)
        fenced = sum((a.last or {}).get("fenced", 0) for a in self.smmus)
        uaf = sum((a.last or {}).get("uaf", 0) for a in self.smmus)
        rate = (cmds - prev[1]) / (t - prev[0]) if t > prev[0] else 0.0
        lost = len(self.lost_actors)
        _say(f"  t={t:7.2f}/{self.sc.duration:g}s  commands/s={rate:9.0f}  fenced={fenced}  uaf={uaf}"
             f"  lag={self.max_lag_wall * 1e3:.0f}ms{'  lost actors=' + str(lost) if lost else ''}")
        return (t, cmds)

    def _wait_done(self, timeout: float) -> None:
        import ray

        live = [a for a in self.smmus + self.devices if a.alive]
        refs = [a.handle.wait_done.remote(timeout) for a in live]
        try:
            ray.wait(refs, num_returns=len(refs), timeout=timeout + 5.0)
        except Exception:
            pass

    def stop_early(self) -> None:
        import ray

        live = [a for a in self.smmus + self.devices if a.alive]
        at = max(0.0, min(self.scenario_now(), self.sc.duration))
        refs = [a.handle.stop_early.remote(at) for a in live]
        try:
            ray.wait(refs, num_returns=len(refs), timeout=10.0)
        except Exception:
            pass
        self._wait_done(timeout=5.0)

    # results ---------------------------------------------------------------------------------------

    def _checkpoint(self, at: float) -> None:
        """Check the bounds that name ``at`` against the actors' figures as they stand now (the
        first poll at or after scenario time ``at``)."""
        nodes, oracles, groups, _, _ = self.gather(final=False)
        partial = build_summary(self.sc, "ray", nodes, oracles, groups, sim_time=at, events=0,
                                wall_time=max(1e-9, time.time() - self.t0))
        self.checked += check_expectations(self.sc, partial, at=at)

    def gather(self, final: bool = True) -> tuple[list, list, list, list, list]:
        import ray

        live = [a for a in self.smmus + self.devices if a.alive]
        refs = [a.handle.stats.remote() for a in live]
        try:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=60.0 if final else 10.0)
        except Exception:
            ready = []
        ready = set(ready)
        got: dict[tuple[str, int], dict] = {}
        t = self.scenario_now()
        for a, ref in zip(live, refs):
            if ref in ready:
                try:
                    got[(a.kind, a.index)] = ray.get(ref)
                    continue
                except Exception as exc:
                    self._actor_died(a, t, f"died ({_last_line(exc)})")
            elif final:
                self._actor_died(a, t, "did not answer at the end")
        nodes, oracles, smmu_tr = [], [], []
        for s in self.smmus:
            st = got.get(("smmu", s.index))
            if st is None:
                nodes.append(_empty_node(s.index))
                oracles.append(_empty_oracle())
                continue
            nodes.append(st["node"])
            oracles.append(st["oracle"])
            smmu_tr.append(st)
        groups, dev_tr = [], []
        for d in self.devices:
            st = got.get(("device", d.index))
            if st is not None:
                groups.append(st["group"])
                dev_tr.append(st)
            else:
                g = dict((d.last or {}).get("group") or _empty_group(d.index))
                g["modes"] = {"removed": len(d.endpoints)}  # lost with its actor: surprise-removed
                groups.append(g)
                if d.last:
                    dev_tr.append({"transport": {"messages_sent": d.last.get("msgs_sent", 0),
                                                 "batches_sent": d.last.get("batches_sent", 0)},
                                   "partial": True})
        return nodes, oracles, groups, smmu_tr, dev_tr

    def kill_all(self) -> None:
        import ray

        for a in self.smmus + self.devices:
            try:
                ray.kill(a.handle, no_restart=True)
            except Exception:
                pass
            a.alive = False

    def placement(self) -> dict[str, Any]:
        actors = []
        nodes: dict[str, dict] = {}
        for a in self.smmus + self.devices:
            nid = a.info.get("node_id")
            actors.append({"kind": a.kind, "index": a.index, "node_id": nid, "node_ip": a.info.get("node_ip"),
                           "pid": a.info.get("pid"), "endpoints": a.endpoints})
            if nid is not None:
                n = nodes.setdefault(nid, {"node_ip": a.info.get("node_ip"), "smmu_actors": [],
                                           "device_actors": [], "endpoints": 0})
                if a.kind == "smmu":
                    n["smmu_actors"].append(a.index)
                else:
                    n["device_actors"].append(a.index)
                    n["endpoints"] += len(a.endpoints)
        out: dict[str, Any] = {"driver_node_id": self.driver_node, "nodes": nodes, "actors": actors}
        if self.metrics_bind:
            out["targets"] = self.targets()
        return out

    def targets(self, alive_only: bool = False) -> list[dict]:
        out = []
        for a in self.smmus + self.devices:
            t = a.info.get("target")
            if t and (a.alive or not alive_only):
                out.append({"targets": [t], "labels": {"job": "ats-stress", "scenario": self.sc.name,
                                                       "policy": self.sc.policy.name, "kind": a.kind,
                                                       "index": str(a.index),
                                                       "node": str(a.info.get("node_id") or "")[:12]}})
        return out

    def transport(self, smmu_tr: list[dict], dev_tr: list[dict], wall: float) -> dict[str, Any]:
        def tot(trs, key):
            return sum(t["transport"].get(key, 0) for t in trs)

        def dist(trs, key):
            vals = sorted(v for t in trs if key in t["transport"] for v in t["transport"][key]["samples"])
            mx = max((t["transport"][key]["max"] for t in trs if key in t["transport"]), default=None)
            return {"p50": percentile(vals, 0.5), "p99": percentile(vals, 0.99), "max": mx}

        rtt = self.rtt
        live_rtt = dist(smmu_tr, "batch_rtt")
        delay = dist(smmu_tr + dev_tr, "delay")
        late = dist(smmu_tr + dev_tr, "timer_lateness")
        worst = max([x for x in (delay["max"], late["max"]) if x is not None] or [0.0])
        worst = max(worst, self.max_lag_wall)
        reasons = []
        c = dict(self.ceiling)
        if c.get("load", 0.0) > 1.0:
            reasons.append(f"the scenario asks for {c['load']:.2f}x the transport ceiling measured at start-up")
        echo_vals = sorted(v for t in smmu_tr for v in t["transport"].get("echo_rtt", {}).get("samples", []))
        echo = {"p50": percentile(echo_vals, 0.5), "p99": percentile(echo_vals, 0.99),
                "mean": sum(echo_vals) / len(echo_vals) if echo_vals else None, "samples": len(echo_vals)}
        if echo["mean"]:
            live_c = transport_ceiling(self.sc, echo["mean"], c.get("syncs_per_unmap"))
            c["live"] = {"device_round_trip_wall_s": echo["mean"],
                         "syncs_per_s_per_queue": live_c["syncs_per_s_per_queue"],
                         "unmaps_per_s": live_c["unmaps_per_s"], "load": live_c["load"],
                         "peak_load": max(self.live_loads, default=live_c["load"]),
                         "windows": len(self.live_loads),
                         "windows_over_ceiling": sum(1 for x in self.live_loads if x > 1.0)}
            if live_c["load"] > 1.0:
                reasons.append(f"during the run a device round trip took {echo['mean'] * 1e3:.2f} ms wall on "
                               f"average: the scenario asked for {live_c['load']:.2f}x what the transport carried")
            elif self.saturated_during:
                reasons.append(f"for {SUSTAINED * 3} s wall or more in a row the transport carried less than the "
                               f"scenario asked for (up to {max(self.live_loads):.2f}x)")
        if worst / self.scale > self.stall_budget:
            reasons.append(f"the actors ran up to {worst * 1e3:.0f} ms wall ({worst / self.scale:.3g} s scenario) "
                           f"behind, beyond {STALL_FRACTION:g} x the policy's software timeout "
                           f"({self.stall_budget:.3g} s scenario)")
        return {
            "kind": self.sc.runtime.transport,
            # stream connections opened: Unix sockets between actors on one node, TCP across nodes
            "links": {k: sum(t["transport"].get("links", {}).get(k, 0) for t in smmu_tr + dev_tr)
                      for k in ("unix", "tcp")},
            "time_scale": self.scale,
            "downstream": {"messages": tot(smmu_tr, "messages_sent"), "bytes": tot(smmu_tr, "bytes_sent"),
                           "batches": tot(smmu_tr, "batches_sent")},
            "upstream": {"messages": tot(dev_tr, "messages_sent"), "bytes": tot(dev_tr, "bytes_sent"),
                         "batches": tot(dev_tr, "batches_sent")},
            "messages_per_wall_s": (tot(smmu_tr, "messages_sent") + tot(dev_tr, "messages_sent")) / wall if wall > 0 else None,
            "dropped_dead_peer": tot(smmu_tr + dev_tr, "dropped_dead_peer"),
            "dropped_after_end": tot(smmu_tr + dev_tr, "dropped_after_end"),
            "synthesised_root_complex_replies": sum(t["transport"].get("synthesised_root_complex_replies", 0)
                                                    for t in smmu_tr),
            "round_trip_wall_s": {"p50": percentile(rtt, 0.5), "p99": percentile(rtt, 0.99), "samples": len(rtt)},
            "batch_round_trip_wall_s": live_rtt,
            "device_round_trip_wall_s": echo,
            "delivery_delay_wall_s": delay,
            "timer_lateness_wall_s": late,
            "ceiling": c,
            "stall_budget_s": self.stall_budget,
            "saturated": bool(reasons),
            "saturation": reasons,
        }


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def _empty_node(index: int) -> dict[str, Any]:
    return {"smmu": index, "unmaps_arrived": 0, "unmaps_skipped": 0, "latencies_healthy": [],
            "latencies_affected": [], "open_healthy": [], "open_affected": [], "completion_errors": {},
            "lockup_s": 0.0, "notes": {}, "log": [], "commands": {}, "events": {}, "hw_atc_timeouts": 0,
            "cmdq_errors": 0, "stale_completions": 0, "queue_depths": [], "resets_requested": 0, "messages_in": 0}


def _empty_oracle() -> dict[str, Any]:
    return {"uaf_exposures": 0, "uaf_reallocated": 0, "uaf_by_sid": {}, "first_uaf_s": None,
            "translated_allowed": 0, "translated_blocked": 0, "fences": [], "unfences": [],
            "fenced_healthy": 0, "fenced_now": [], "resets": []}


def _empty_group(index: int) -> dict[str, Any]:
    from .summary import GROUP_COUNTERS

    return {**{k: 0 for k in GROUP_COUNTERS}, "modes": {}, "index": index}


# --- the entry point -------------------------------------------------------------------------------


def run_ray(sc: Scenario, *, address: str | None = None, out_dir: Path | str | None = None, quiet: bool = False,
            metrics_bind: str | None = None, node_killer: Callable[[str], Any] | None = None,
            startup_timeout: float = 120.0, device_options: dict | None = None,
            smmu_options: dict | None = None, num_cpus: int | None = None) -> dict[str, Any]:
    """Run ``sc`` on live Ray actors and return its summary (also written to out_dir/summary.json).

    address: None starts an embedded local Ray (or joins RAY_ADDRESS, as inside a Ray Job); "auto",
    "ray://host:10001" or "host:6379" join that cluster; an http:// Jobs address is refused with
    the `ray job submit` command to use instead. If Ray is already initialised it is used as is.
    node_killer(node_id) kills a cluster node for ``kill_node`` chaos (default: kill the device
    actors on that node). metrics_bind ("host:port", port 0 for any) starts the actors' exporters.
    """
    plan = build_plan(sc)
    if metrics_bind:
        try:
            from . import metrics  # noqa: F401
        except ImportError as exc:
            raise RuntimeInputError(f"metrics_bind={metrics_bind!r}: the metrics exporters are not available "
                                    f"({exc}); run without metrics.") from None
    spu = probe_syncs_per_unmap(sc)
    owned = connect(address, num_cpus=num_cpus)
    run = None
    try:
        run = LiveRun(sc, plan, quiet=quiet, metrics_bind=metrics_bind, node_killer=node_killer,
                      startup_timeout=startup_timeout, device_options=device_options, smmu_options=smmu_options)
        startup = time.time()
        started = False
        status = "complete"
        try:
            run.create()
            run.measure(spu)
            if metrics_bind and out_dir is not None:
                run.targets_file = Path(out_dir) / "prometheus-targets.json"
                run.write_targets()
            run.start()
            started = True
        except KeyboardInterrupt:  # before scenario time began: an empty, interrupted summary
            status = "interrupted"
            run.t0 = time.time()
            run.kill_all()
        startup = time.time() - startup
        try:
            if started:
                status = run.run()
        except KeyboardInterrupt:
            status = "interrupted"
            _say("interrupted: gathering the summary from the live actors ...")
        except ScenarioError:
            raise
        except Exception as exc:  # the cluster went away under us
            status = "failed"
            run.failure = f"{type(exc).__name__}: {_last_line(exc)}"
        if status != "complete" and started:
            try:
                run.stop_early()
            except KeyboardInterrupt:
                pass
        ended = time.time()
        nodes, oracles, groups, smmu_tr, dev_tr = run.gather()
        if run.failure and status == "complete":
            status = "failed"
        wall = max(1e-9, min(ended, time.time()) - run.t0)
        end_s = [st["end_s"] for st in smmu_tr] or [max(0.0, min(run.scenario_now(), sc.duration))]
        sim_time = (min(end_s) if status != "complete" else sc.duration) if started else 0.0
        events = sum(st["transport"].get("timers_fired", 0) + st["transport"].get("batches_received", 0)
                     for st in smmu_tr + dev_tr)
        transport = run.transport(smmu_tr, dev_tr, wall)
        lost = {"actors": run.lost_actors, "endpoints": sorted(run.lost_endpoints), "nodes": run.lost_nodes}
        summary = build_summary(sc, "ray", nodes, oracles, groups, sim_time=sim_time, events=events,
                                wall_time=wall, status=status, checkpoint_results=run.checked,
                                extra={"placement": run.placement(), "transport": transport, "lost": lost})
        summary["wall"]["startup_s"] = startup
        if run.failure:
            summary["failure"] = run.failure
        if transport["saturated"]:
            line = ("transport saturated: " + "; ".join(transport["saturation"]) +
                    ". This run's timeouts, fences and latencies measure the live runtime, not the devices; "
                    f"{_knobs()}.")
            run.warnings.append(line)
            _say(f"warning: {line}")
            summary["expectations"].append({"name": "transport_not_saturated", "ok": False,
                                            "observed": transport["saturation"], "bound": {"saturated": False}})
            summary["ok"] = False
        summary["warnings"] = run.warnings
        if out_dir is not None:
            write_json(Path(out_dir) / "summary.json", summary)
        return summary
    finally:
        if run is not None:
            run.kill_all()
        if owned:
            import ray

            ray.shutdown()


__all__ = ["RuntimeInputError", "run_ray", "connect", "remote"]
