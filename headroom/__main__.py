"""``python -m headroom``: the detected budget, its source, the per-tag caps, the GPU view."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from headroom.budget import Budget
from headroom.limits import Limits, memory_limit_name
from headroom.units import format_mib

# The tag of tasks that hold a GPU (in the limits declaration): without a GPU none of them runs,
# so it has no cap to show.
GPU_TAG = "gpu"


def report(limit: str | None = None, fraction: float = 0.8) -> dict[str, Any]:
    """What headroom would run under on this host, as a dict."""
    budget = Budget.detect(limit, fraction)
    limits = Limits.load()
    gpus = Budget.gpu() or []
    return {
        "budget_mb": round(budget.mb, 1),
        "source": budget.source,
        "host_mb": round((budget.host_bytes or 0) / (1 << 20), 1),
        "cgroup_mb": round(budget.cgroup_bytes / (1 << 20), 1) if budget.cgroup_bytes else None,
        "reserve_mb": round(limits.reserve_for(budget), 1),
        "memory_limit": {"name": memory_limit_name(), "mb": limits.host_limit_mb(budget)},
        "tags": {
            tag: {
                "slots": spec.slots,
                "cap_mb": None
                if tag == GPU_TAG and not gpus
                else round(limits.cap_mb(tag, budget), 1),
                "declared": spec.cap_mb is not None,
            }
            for tag, spec in limits.tags.items()
        },
        "limits_file": limits.source,
        "gpus": [device.__dict__ for device in gpus],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="headroom", description=__doc__)
    parser.add_argument("--limit", help="budget override, e.g. 2GiB (else $HEADROOM_MEMORY_LIMIT)")
    parser.add_argument("--fraction", type=float, default=0.8, help="share of detected memory")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    facts = report(args.limit, args.fraction)
    if args.json:
        print(json.dumps(facts, indent=2))
        return
    print(f"budget        {format_mib(facts['budget_mb'])}  ({facts['source']})")
    cgroup = facts["cgroup_mb"]
    print(
        f"host          {format_mib(facts['host_mb'])}; cgroup limit "
        f"{format_mib(cgroup) if cgroup else 'none'}"
    )
    memory = facts["memory_limit"]
    print(
        f"task memory   {memory['name']} = {format_mib(memory['mb'])} "
        f"(budget minus {format_mib(facts['reserve_mb'])} for the orchestrator)"
    )
    print(f"limits from   {facts['limits_file']}")
    print(f"{'tag':<16}{'slots':>6}  cap per task")
    for tag, spec in facts["tags"].items():
        if spec["cap_mb"] is None:
            print(f"{tag:<16}{spec['slots']:>6}  none (no GPU visible)")
            continue
        how = "declared" if spec["declared"] else "budget / slots"
        print(f"{tag:<16}{spec['slots']:>6}  {format_mib(spec['cap_mb'])} ({how})")
    gpus = facts["gpus"]
    if not gpus:
        print("gpu           none visible through NVML (GPU tasks run on the CPU backend)")
    for gpu in gpus:
        slots = facts["tags"].get("gpu", {}).get("slots", 1)
        print(
            f"gpu {gpu['index']}         {gpu['name']}: {format_mib(gpu['total_mb'])} total, "
            f"{format_mib(gpu['free_mb'])} free; {format_mib(gpu['total_mb'] / slots)} per "
            f"gpu task"
        )


if __name__ == "__main__":
    main()
