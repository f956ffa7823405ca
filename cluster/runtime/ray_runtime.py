"""The ``ray`` runtime: the same sans-IO model, driven by live Ray actors on wall-clock time.

- One SMMU actor per SMMU (iommu_actor/actor.py: an SmmuNode and its Oracle) and one async
  device actor per plan group (device_actors/actor.py: an EndpointGroup). Device actors are
  spread over the cluster's nodes (SPREAD scheduling); SMMU actors stay on the driver's node
  (the host), node affinity. The summary records who ran where.
- Every message crosses as msgpack batches, in sequence per (sender, destination), so each
  direction is FIFO (``live.py``, ``transport.py``, ``stream.py``).
- Time: scenario seconds = (wall - t0) / runtime.time_scale, with a common t0 chosen by the driver.
- Before the run the driver measures the SMMU <-> device-actor round trip and works out the
  transport floor (``startup.py``); it warns when the scenario asks for more, watches lag during
  the run, and marks a saturated run's verdicts (summary["transport"]["saturated"]), so transport
  overload never passes for a device fault.
- Ray-level chaos: ``kill_actor`` and ``kill_node`` (``chaos.py``); gathering (``gather.py``);
  joining a cluster (``connect.py``).

``run_ray(sc, address=..., out_dir=..., quiet=...)`` returns the summary dict (same fields as the
``sim`` runtime's plus ``placement``, ``transport`` and ``lost``). Bad addresses, a dead cluster
or actors that will not start raise RuntimeInputError (one paragraph; the CLI exits 2).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ats_stress.cluster.results.summary import build_summary, checkpoints, write_summary
from ats_stress.cluster.scenario import Scenario
from ats_stress.cluster.scenario.plan import Plan, build_plan

from .chaos import ChaosKills
from .connect import RuntimeInputError, connect, last_line, remote, say as _say
from .gather import Gathering
from .startup import (
    RTT_SAMPLES,
    STALL_FRACTION,
    SUSTAINED,
    Startup,
    _Actor,
    _knobs,
    policy_timeout,
    probe_syncs_per_unmap,
    transport_ceiling,
)

#: the driver looks at the actors this often (wall s)
POLL_EVERY = 0.5



class LiveRun(Startup, ChaosKills, Gathering):
    """One live run: its actors, what was lost, and the driver's loop until the end."""

    def __init__(self, sc: Scenario, plan: Plan, *, quiet: bool, metrics_bind: str | None,
                 node_killer: Callable[[str], Any] | None, startup_timeout: float,
                 device_options: dict | None, smmu_options: dict | None, sampler=None, plugins: tuple = ()):
        self.sc = sc
        self.plan = plan
        self.plugins = tuple(plugins)  # --policy-file sources: the SMMU actors register them too
        self.quiet = quiet
        self.sampler = sampler  # a LiveSeries: the actors' time series for the report's plots
        if sampler is not None:
            sampler.step_targets = plan.step_targets
            sampler.group_sizes = {g.index: len(g.endpoints) for g in plan.groups}
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

    def stage(self, text: str) -> None:
        """Name a start-up stage on stderr, with the wall time since the run began (unless quiet)."""
        if not self.quiet:
            _say(f"[{time.time() - self.started_wall:5.1f} s] {text}")

    # set-up ---------------------------------------------------------------------------------------

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
        self._poll()  # an error since the last poll (a plug-in's bad action near the end) fails the run too
        if not self.quiet:
            self._show(prev)
        return "failed" if self.failure else "complete"

    def _poll(self) -> bool:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        live = [a for a in self.smmus + self.devices if a.alive]
        refs = [a.handle.progress.remote() for a in live]
        try:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=5.0)
        except Exception as exc:
            self.failure = f"the cluster failed ({last_line(exc)})"
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
                self._actor_died(a, t, f"died ({last_line(exc)})")
                continue
            a.last = p
            self.keep_samples(a, p)
            if p.get("echo_wall_s"):
                self.echo_window.extend(p["echo_wall_s"])
            if p["errors"]:
                self.failure = p["errors"][0]  # each error names its actor
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

    def _show(self, prev: tuple[float, int]) -> tuple[float, int]:
        t = max((a.last or {}).get("t", 0.0) for a in self.smmus)
        cmds = sum((a.last or {}).get("commands", 0) for a in self.smmus)
        fenced = sum((a.last or {}).get("fenced", 0) for a in self.smmus)
        uaf = sum((a.last or {}).get("uaf", 0) for a in self.smmus)
        rate = (cmds - prev[1]) / (t - prev[0]) if t > prev[0] else 0.0
        lost = len(self.lost_actors)
        # each field is explained in README.md, "Live runtime"
        _say(f"  t={t:7.2f}/{self.sc.duration:g}s  commands/s={rate:9.0f}  fenced now={fenced}  uaf={uaf}"
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

# --- the entry point -------------------------------------------------------------------------------


def _ray_stage(address: str | None) -> str:
    import ray

    if ray.is_initialized():
        return "using the Ray this process already joined"
    joining = address or os.environ.get("RAY_ADDRESS")
    return f"joining the Ray cluster at {joining}" if joining else "starting an embedded local Ray"


def run_ray(sc: Scenario, *, address: str | None = None, out_dir: Path | str | None = None, quiet: bool = False,
            metrics_bind: str | None = None, node_killer: Callable[[str], Any] | None = None,
            startup_timeout: float = 120.0, device_options: dict | None = None,
            smmu_options: dict | None = None, num_cpus: int | None = None, sampler=None,
            plugins: tuple = ()) -> dict[str, Any]:
    """Run ``sc`` on live Ray actors and return its summary (also written to out_dir/summary.json).

    address: None starts an embedded local Ray (or joins RAY_ADDRESS, as inside a Ray Job); "auto",
    "ray://host:10001" or "host:6379" join that cluster; an http:// Jobs address is refused with
    the `ray job submit` command to use instead. If Ray is already initialised it is used as is.
    node_killer(node_id) kills a cluster node for ``kill_node`` chaos (default: kill the device
    actors on that node). metrics_bind ("host:port", port 0 for any) starts the actors' exporters.
    sampler (a ``LiveSeries``) receives the time series the actors sample, for the report's plots.
    Unless ``quiet``, each start-up stage is named on stderr as it begins. ``plugins`` (the
    ``PluginSource``s of --policy-file) are registered in the SMMU actors before they build the policy.
    """
    plan = build_plan(sc)
    if metrics_bind:
        try:
            from ats_stress.cluster.results import metrics  # noqa: F401
        except ImportError as exc:
            raise RuntimeInputError(f"metrics_bind={metrics_bind!r}: the metrics exporters are not available "
                                    f"({exc}); run without metrics.") from None
    run = LiveRun(sc, plan, quiet=quiet, metrics_bind=metrics_bind, node_killer=node_killer,
                  startup_timeout=startup_timeout, device_options=device_options, smmu_options=smmu_options,
                  sampler=sampler, plugins=plugins)
    run.stage(f"measuring {sc.policy.name}'s CMD_SYNCs per unmap (a short sim run, for the transport ceiling)")
    spu = probe_syncs_per_unmap(sc)
    run.stage(_ray_stage(address))
    owned = connect(address, num_cpus=num_cpus)
    try:
        startup = time.time()
        started = False
        status = "complete"
        try:
            run.create()
            run.stage(f"measuring the SMMU <-> device actor round trip ({RTT_SAMPLES} samples)")
            run.measure(spu)
            if metrics_bind and out_dir is not None:
                run.targets_file = Path(out_dir) / "prometheus-targets.json"
                run.write_targets()
            run.start()
            run.stage(f"running {sc.duration:g} scenario s at time_scale {run.scale:g} "
                      f"(about {sc.duration * run.scale:.0f} s of wall time)")
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
        except Exception as exc:  # the cluster went away under us
            status = "failed"
            run.failure = f"{type(exc).__name__}: {last_line(exc)}"
        if status != "complete" and started:
            try:
                run.stop_early()
            except KeyboardInterrupt:
                pass
        ended = time.time()
        nodes, oracles, groups, smmu_tr, dev_tr = run.gather()
        if run.failure and status == "complete":
            status = "failed"
        wall = max(1e-9, ended - run.t0)
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
            summary["failure"] = summary["error"] = run.failure  # "error": the key the sim runtime and the CLI use
        if transport["saturated"]:
            line = ("transport saturated: " + "; ".join(transport["saturation"]) +
                    ". This run's timeouts, fences and latencies measure the live runtime, not the devices; "
                    f"{_knobs()} (from what this run measured, --set runtime.time_scale="
                    f"{transport['time_scale_hint']:g} should do).")
            run.warnings.append(line)
            _say(f"warning: {line}")
            summary["expectations"].append({"name": "transport_not_saturated", "ok": False,
                                            "observed": transport["saturation"], "bound": {"saturated": False}})
            summary["ok"] = False
        summary["warnings"] = run.warnings
        if out_dir is not None:
            write_summary(Path(out_dir), summary)  # summary.json and uaf-trace.jsonl
        return summary
    finally:
        run.kill_all()
        if owned:
            import ray

            ray.shutdown()


__all__ = ["RuntimeInputError", "run_ray", "connect", "remote"]
