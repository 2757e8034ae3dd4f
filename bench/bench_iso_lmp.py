"""iso_lmp: hourly day-ahead files of three ISOs (MISO, PJM, SPP) to Parquet, side by side.

Baseline: the old converters' way: each file read whole with pandas, batches of 50 files
``pd.concat``-ed and kept in a list, one ``pd.concat`` of every batch at the end. Ours: the
pure conversion path of the flow (one guarded child per ISO: stage every file, publish each
month), without the Prefect server. Both run as separate processes; figures are the whole
process tree's peak RSS and CPU seconds. Sizes: ``--nodes`` and twice as many nodes, over
``--days`` days times ``--scale`` (a year of a few thousand nodes is ``--nodes 3000 --days
365``; the default is scaled down to finish in a few minutes on 2 shared cores).

    .venv/bin/python -m bench.bench_iso_lmp [--nodes 1000] [--days 60] [--scale 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.iso_lmp")

ISOS = ("MISO", "PJM", "SPP")
BATCH = 50
CAP_MB = 600.0  # the iso-convert tag's cap in deployments/limits.toml
SCRATCH = Path("/tmp/iso_lmp-scratch/bench")


def generate(raw: Path, nodes: int, days: int) -> int:
    """A day-ahead file per ISO and day; returns the rows written."""
    from flows.iso_lmp import samples
    from flows.iso_lmp.base import Market
    from flows.iso_lmp.formats.registry import iso_format

    first = date(2023, 1, 1)
    rows = 0
    for iso in ISOS:
        for offset in range(days):
            day = first + timedelta(days=offset)
            samples.write_day(iso, Market.DAY_AHEAD_HOURLY, day, raw / iso.lower(), nodes)
            hours = len(samples.interval_starts(iso_format(iso), Market.DAY_AHEAD_HOURLY, day))
            rows += hours * nodes
    return rows


# --- the baseline -----------------------------------------------------------------------------


def _baseline_frame(iso: str, path: Path):
    import pandas as pd

    if iso == "MISO":
        wide = pd.read_csv(path, skiprows=4)
        long = wide.melt(id_vars=["Node", "Type", "Value"], var_name="he", value_name="price")
        frame = long.pivot_table(
            index=["Node", "Type", "he"], columns="Value", values="price"
        ).reset_index()
        day = pd.Timestamp(path.name[:8])
        hours = frame["he"].str[3:].astype(int) - 1
        start = day + pd.to_timedelta(hours + 5, unit="h")
        frame = pd.DataFrame(
            {
                "interval_start_utc": start.dt.tz_localize("UTC"),
                "location": frame["Node"],
                "location_type": frame["Type"],
                "lmp": frame["LMP"],
                "congestion": frame["MCC"],
                "loss": frame["MLC"],
            }
        )
        frame["energy"] = frame["lmp"] - frame["congestion"] - frame["loss"]
    elif iso == "PJM":
        raw = pd.read_csv(path)
        frame = pd.DataFrame(
            {
                "interval_start_utc": pd.to_datetime(
                    raw["datetime_beginning_utc"], format="%m/%d/%Y %I:%M:%S %p"
                ).dt.tz_localize("UTC"),
                "location": raw["pnode_id"].astype(str),
                "location_type": raw["type"],
                "lmp": raw["total_lmp_da"],
                "energy": raw["system_energy_price_da"],
                "congestion": raw["congestion_price_da"],
                "loss": raw["marginal_loss_price_da"],
            }
        )
    else:
        raw = pd.read_csv(path)
        end = pd.to_datetime(raw["GMTIntervalEnd"], format="%m/%d/%Y %H:%M:%S")
        frame = pd.DataFrame(
            {
                "interval_start_utc": (end - pd.Timedelta(hours=1)).dt.tz_localize("UTC"),
                "location": raw["Settlement Location"],
                "location_type": "Settlement Location",
                "lmp": raw["LMP"],
                "energy": raw["MEC"],
                "congestion": raw["MCC"],
                "loss": raw["MLC"],
            }
        )
    zone = {"MISO": "EST", "PJM": "America/New_York", "SPP": "America/Chicago"}[iso]
    local = frame["interval_start_utc"].dt.tz_convert(zone)
    frame["interval_start_local"] = local.dt.tz_localize(None)
    frame["utc_offset_minutes"] = (
        (frame["interval_start_local"] - frame["interval_start_utc"].dt.tz_localize(None))
        .dt.total_seconds()
        .floordiv(60)
        .astype("int16")
    )
    frame["interval_end_utc"] = frame["interval_start_utc"] + pd.Timedelta(hours=1)
    frame["iso"], frame["market"] = iso, "DAY_AHEAD_HOURLY"
    return frame


def run_baseline(raw: Path, out: Path) -> int:
    """The batch-of-50 ``pd.concat`` converter; returns rows written."""
    import gc

    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    rows = 0
    for iso in ISOS:
        files = sorted((raw / iso.lower()).iterdir())
        batches = []
        for first in range(0, len(files), BATCH):
            frames = [_baseline_frame(iso, f) for f in files[first : first + BATCH]]
            batches.append(pd.concat(frames, ignore_index=True))
            del frames
            gc.collect()
        table = pd.concat(batches, ignore_index=True)
        table.to_parquet(out / f"{iso}.parquet", index=False)
        rows += len(table)
        del batches, table
        gc.collect()
    return rows


# --- ours -------------------------------------------------------------------------------------


def run_ours(raw: Path, out: Path) -> int:
    """The flow's conversion path, one guarded child per ISO; returns rows published."""
    from flows.iso_lmp import dataset
    from headroom import run_guarded

    staging = raw / dataset.STAGING
    shutil.rmtree(staging, ignore_errors=True)
    rows = 0
    for iso in ISOS:
        files = [str(p) for p in sorted((raw / iso.lower()).iterdir()) if p.is_file()]
        for first in range(0, len(files), 400):
            result = run_guarded(
                dataset.convert_files,
                iso,
                files[first : first + 400],
                str(staging),
                262_144,
                str(out),
                cap_mb=CAP_MB,
            )
            rows += sum(p["rows"] for p in result["partitions"])
    return rows


# --- the comparison ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("subject", nargs="?", choices=["baseline", "ours"])
    parser.add_argument("--raw", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.subject:  # a measured child: print the rows as the last line
        run = run_baseline if args.subject == "baseline" else run_ours
        print(json.dumps({"rows": run(args.raw, args.out)}))
        return
    compare(args.nodes, max(1, round(args.days * args.scale)))


def compare(nodes: int, days: int) -> None:
    from bench.common import write_section

    results = []
    for size in (nodes, 2 * nodes):
        results += _measure_size(size, days)
    markdown = _report(nodes, days, results)
    write_section("iso_lmp", markdown)
    print(markdown)


def _measure_size(size: int, days: int) -> list[tuple[int, str, int, Any]]:
    """(size, subject, rows, measurement) of the baseline and ours on ``size`` nodes."""
    from bench.common import measure

    raw = SCRATCH / f"raw-{size}"
    shutil.rmtree(SCRATCH, ignore_errors=True)
    expected = generate(raw, size, days)
    log.info(
        "generated %s rows for %d nodes x %d days x %d ISOs", f"{expected:,}", size, days, len(ISOS)
    )
    results = []
    for subject in ("baseline", "ours"):
        out = SCRATCH / f"out-{subject}-{size}"
        argv = [sys.executable, "-m", "bench.bench_iso_lmp", subject]
        measured = measure(f"{subject} {size}", [*argv, "--raw", str(raw), "--out", str(out)])
        if measured.returncode != 0:
            raise SystemExit(f"{subject} failed:\n{measured.output[-3000:]}")
        rows = json.loads(measured.output.strip().splitlines()[-1])["rows"]
        if rows != expected:
            raise SystemExit(f"{subject} wrote {rows} rows, expected {expected}")
        results.append((size, subject, rows, measured))
        log.info(
            "%s %d nodes: %s rows, %.1f s wall, %.1f CPU s, peak %.0f MiB",
            subject,
            size,
            f"{rows:,}",
            measured.wall_s,
            measured.cpu_s,
            measured.peak_rss_mb,
        )
    shutil.rmtree(SCRATCH, ignore_errors=True)
    return results


def _report(nodes: int, days: int, results: list[tuple[int, str, int, Any]]) -> str:
    """The BENCHMARKS.md section: a row per size and subject, then the targets' verdicts."""
    from bench.common import table

    rows_md, verdicts = [], []
    for size in (nodes, 2 * nodes):
        base = next(m for s, sub, _, m in results if s == size and sub == "baseline")
        ours = next(m for s, sub, _, m in results if s == size and sub == "ours")
        count = next(r for s, _, r, _ in results if s == size)
        ratio = ours.per_core(count) / base.per_core(count)
        for label, m in (("baseline (pd.concat batches of 50)", base), ("headroom", ours)):
            rows_md.append(
                [
                    f"{size:,}",
                    label,
                    count,
                    m.wall_s,
                    m.cpu_s,
                    m.per_core(count),
                    m.peak_rss_mb,
                    ratio if m is ours else 1.0,
                ]
            )
        verdicts += _verdicts(size, base, ours, count, ratio)
    header = ["nodes", "subject", "rows", "wall s", "CPU s", "rows/CPU s", "peak RSS MiB"]
    return "\n".join(
        [
            "## iso_lmp: ISO price files to Parquet",
            "",
            f"Hourly day-ahead files of MISO, PJM and SPP, {days} days (scaled down from a "
            "year to fit a few minutes on 2 shared cores), at two node counts. Per core = rows "
            "/ CPU seconds of the whole process tree; ours = the flow's conversion path in "
            "guarded children, without the Prefect server.",
            "",
            table([*header, "x baseline"], rows_md),
            "",
            "Targets:",
            *verdicts,
        ]
    )


def _verdicts(size: int, base: Any, ours: Any, count: int, ratio: float) -> list[str]:
    """Whether ours meets each target at ``size`` nodes."""
    return [
        f"- {size:,} nodes: peak RSS of the tree <= 1 GB: "
        f"{'met' if ours.peak_rss_mb * 1.048576 <= 1000 else 'not met'} "
        f"({ours.peak_rss_mb:,.0f} MiB; baseline {base.peak_rss_mb:,.0f} MiB)",
        f"- {size:,} nodes: >= 1 M rows/s per core: "
        f"{'met' if ours.per_core(count) >= 1e6 else 'not met'} "
        f"({ours.per_core(count):,.0f})",
        f"- {size:,} nodes: >= 5x the baseline's throughput: "
        f"{'met' if ratio >= 5 else 'not met'} ({ratio:.1f}x)",
    ]


if __name__ == "__main__":
    main()
