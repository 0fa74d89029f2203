"""Where ``vfmtok demo`` spends its time, stage by stage (not collected by pytest).

Reads a finished demo folder's ``stages/*.json`` (each stage records its wall seconds and, since the stage timer
learned it, the CPU seconds of all its threads) and prints one JSON line per stage plus a total: wall and CPU
seconds and each stage's share of the total. CPU seconds are the figure to compare on a shared machine, where wall
time depends on the other jobs; on a quiet 2-core machine wall is about CPU / 2 for the training stages.

    make demo                                # or: vfmtok demo --out demo-out
    python bench/demo_stages.py demo-out
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = ("data", "tokenizer", "codes", "gpt", "samples", "evaluate", "regions", "report")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the demo's --out folder")
    args = parser.parse_args()
    stages = {p.stem: json.loads(p.read_text()) for p in sorted((args.out / "stages").glob("*.json"))}
    if not stages:
        raise SystemExit(f"{args.out}/stages holds no stage records: is it a demo folder?")
    names = [n for n in ORDER if n in stages] + sorted(n for n in stages if n not in ORDER)
    wall = sum(float(stages[n].get("seconds", 0.0)) for n in names)
    cpu = sum(float(stages[n].get("cpu_seconds", 0.0)) for n in names)
    for n in names:
        s = stages[n]
        print(json.dumps({"stage": n, "wall_s": s.get("seconds"), "cpu_s": s.get("cpu_seconds"),
                          "wall_share": round(float(s.get("seconds", 0.0)) / wall, 3) if wall else None,
                          "cpu_share": round(float(s.get("cpu_seconds", 0.0)) / cpu, 3) if cpu else None}))
    print(json.dumps({"stage": "total", "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                      "stages_without_cpu_s": [n for n in names if "cpu_seconds" not in stages[n]]}))


if __name__ == "__main__":
    main()
