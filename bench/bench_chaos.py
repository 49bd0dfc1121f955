"""Chaos: 1000 jobs (sim: plain, slow, python hang, C-level hang, crash, error, cancelled by the client) on 4
engines while a random engine is SIGKILLed every 2-4 s, the supervisor is SIGKILLed twice and restarted on the same
run directory, and the IPyParallel controller is SIGKILLed once.

    .venv/bin/python -m bench.bench_chaos [--jobs 1000] [--standby 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench.stats import table  # noqa: E402
from chaos import Chaos, Plan  # noqa: E402


def main(jobs: int, standby: int) -> int:
    plan = Plan(jobs=jobs, standby=standby)
    with tempfile.TemporaryDirectory() as tmp:
        r = Chaos(Path(tmp), plan).run()

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} / {max(values):.2f}" if values else "-"

    rows: list[list[object]] = [
        ["jobs submitted", r.jobs], ["outcomes", ", ".join(f"{k} {v}" for k, v in sorted(r.outcomes.items()))],
        ["lost", len(r.lost)], ["not ended", len(r.not_ended)], ["non-success without a reason", len(r.without_reason)],
        ["ended otherwise than their kind allows", len(r.unexpected)],
        ["engines SIGKILLed", r.engine_kills], ["back to 4 serving engines, s (median / max)", spread(r.engine_recovery_s)],
        ["supervisor SIGKILLed + restarted", r.supervisor_kills],
        ["supervisor restart to all engines serving, s", spread(r.supervisor_restart_s)],
        ["controller SIGKILLed", r.controller_kills], ["controller kill to 4 serving engines, s", spread(r.controller_recovery_s)],
        ["kills not recovered from", r.not_recovered], ["processes left at the end", len(r.leftovers)],
        ["wall time, s", round(r.duration_s, 1)],
    ]
    print(table(f"Chaos, {jobs} jobs, 4 engines, --standby {standby}", ["measure", "value"], rows))
    for line in r.unexpected[:10] + r.leftovers[:10]:
        print(" ", line)
    return 0 if r.ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--standby", type=int, default=1)
    args = parser.parse_args()
    raise SystemExit(main(args.jobs, args.standby))
