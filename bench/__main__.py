"""`make bench`: every benchmark in turn; each prints its figures and writes bench/results/NAME.json."""

import importlib
import sys

BENCHMARKS = ["sim_vs_simpy", "sim_reference", "live_scale", "live_throughput", "timer_accuracy", "live_memory",
              "scaling", "fanout", "sim_speed", "explore_boundary", "sim_ceiling"]


def main(argv: list[str]) -> int:
    names = argv or BENCHMARKS
    for name in names:
        if name not in BENCHMARKS:
            print(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
    for name in names:
        print(f"== {name}")
        importlib.import_module(f"bench.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
