"""The PNG of a bench_run.py result: downtime, total time, where `migrate run`'s time goes, and
peak memory, one group of bars per case.

    .venv/bin/python benchmarks/plot.py benchmarks/results/matrix.json   # -> matrix.png

Needs matplotlib (the `bench` extra: pip install -e '.[bench]'; `make bench` installs it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

GOAL_PEAK_RSS_MIB = 200e6 / (1 << 20)


def _label(c: dict[str, Any]) -> str:
    text = "" if c["text_pct"] == 50 else f"\n{c['text_pct']}% text"
    return f"{c['mem_mb']} MiB\nRW {c['rw_mb']}{text}"


def plot(doc: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display here
    import matplotlib.pyplot as plt

    cases = doc["cases"]
    labels = [_label(c) for c in cases]
    x = list(range(len(cases)))
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (ax_down, ax_total), (ax_phases, ax_rss) = axes

    def bars(ax: Any, series: list[tuple[str, list[float | None]]], ylabel: str) -> None:
        width = 0.8 / max(1, len(series))
        for i, (name, ys) in enumerate(series):
            xs = [p + (i - (len(series) - 1) / 2) * width for p in x]
            vals = [y if y is not None else 0.0 for y in ys]
            drawn = ax.bar(xs, vals, width, label=name)
            ax.bar_label(drawn, labels=[f"{y:.1f}" if y else "" for y in ys], fontsize=7)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)

    d = [c["derived"] for c in cases]
    down: list[tuple[str, list[float | None]]] = [
        ("manual", [v.get("manual_downtime_s") for v in d]),
        ("manual, image pre-copied", [v.get("manual_downtime_without_image_s") for v in d]),
        ("migrate (cold)", [v.get("migrate_downtime_s") for v in d]),
    ]
    if any(v.get("lazy_downtime_s") is not None for v in d):
        down.append(("migrate --strategy lazy", [v.get("lazy_downtime_s") for v in d]))
    bars(ax_down, down, "downtime (s)")
    ax_down.set_title("Downtime: pause to running on b")
    bars(
        ax_total,
        [
            ("manual", [v.get("manual_total_s") for v in d]),
            ("migrate", [v.get("migrate_total_s") for v in d]),
            ("OpenSSH cat, same raw bytes", [v.get("raw_ssh_best_s") for v in d]),
        ],
        "seconds",
    )
    ax_total.set_title("Total time, and the raw link for the same bytes")

    # stacked phases of the cold migration, in the order they ran
    names: list[str] = []
    for c in cases:
        for k in (c["migrate"] or {}).get("report", {}).get("phases", {}):
            if k not in names:
                names.append(k)
    bottom = [0.0] * len(cases)
    for k in names:
        ys = [
            float(((c["migrate"] or {}).get("report", {}).get("phases", {})).get(k, 0.0))
            for c in cases
        ]
        ax_phases.bar(x, ys, 0.6, bottom=bottom, label=k)
        bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
    ax_phases.set_xticks(x, labels, fontsize=8)
    ax_phases.set_ylabel("seconds")
    ax_phases.set_title("`migrate run` phases (freeze..restore = downtime)")
    ax_phases.legend(fontsize=7, ncol=2)

    bars(
        ax_rss,
        [
            ("source (migrate run)", [v.get("source_peak_rss_mib") for v in d]),
            ("agent (migrate agent)", [v.get("agent_peak_rss_mib") for v in d]),
        ],
        "peak RSS (MiB)",
    )
    ax_rss.axhline(GOAL_PEAK_RSS_MIB, color="red", linestyle="--", linewidth=1)
    ax_rss.set_title("Peak memory (VmHWM); red: the 200 MB goal")

    meta = doc.get("meta", {})
    fig.suptitle(
        f"migrate vs manual vs raw ssh, {meta.get('date', '')}, commit {meta.get('git', '')}"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    src = Path(sys.argv[1])
    plot(json.loads(src.read_text()), src.with_suffix(".png"))
