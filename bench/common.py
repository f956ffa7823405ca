"""Shared helpers for the benchmarks: where results go, what machine they ran on."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "memory_gib": mem, "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform()}


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def number_list(minimum: float, cast=int):
    """An argparse ``type``: comma-separated numbers >= minimum ("250,1000,2000"), sorted, no repeats."""
    def parse(text: str) -> list:
        try:
            out = sorted({cast(x) for x in text.split(",") if x.strip()})
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give numbers separated by commas") from None
        if not out or out[0] < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: at least one number, each >= {minimum:g}")
        return out
    return parse
