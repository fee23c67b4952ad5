"""The ingest ratios of every measurement, by how fast its machine ran the baseline: plots the
table under "Ratios by machine" in docs/performance.md into docs/ratios-by-machine.png.

Each row is drawn as a box: across, the range of the baseline's CPU time per request; up, the
range of the ratio its runs gave. Needs matplotlib:

    .venv/bin/pip install matplotlib && .venv/bin/python bench/by_machine.py
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

DOCS = Path(__file__).resolve().parent.parent / "docs"
_RANGE = r"(\d+(?:\.\d+)?)\u2013(\d+(?:\.\d+)?)"
_ROW = re.compile(rf"^\| {_RANGE} µs \((.*?)\) \| {_RANGE} \| {_RANGE} \|")


class Machine(NamedTuple):
    label: str
    cpu_us: tuple[float, float]
    noop: tuple[float, float]
    send_message: tuple[float, float]


def machines(markdown: str) -> list[Machine]:
    """The rows of the table under the "Ratios by machine" heading."""
    section = markdown.split("## Ratios by machine", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        found = _ROW.match(line)
        if found:
            lo, hi, label, *ratios = found.groups()
            n0, n1, s0, s1 = map(float, ratios)
            rows.append(Machine(label, (float(lo), float(hi)), (n0, n1), (s0, s1)))
    if not rows:
        raise SystemExit("no rows found under 'Ratios by machine' in docs/performance.md")
    return rows


def plot(rows: list[Machine], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for workload, colour in (("noop", "tab:blue"), ("send_message", "tab:orange")):
        for i, row in enumerate(rows):
            (x0, x1), (y0, y1) = row.cpu_us, getattr(row, workload)
            box = Rectangle(
                (x0, y0),
                max(x1 - x0, 0.5),
                max(y1 - y0, 0.004),
                facecolor=colour,
                edgecolor=colour,
                alpha=0.45,
                label=workload if i == 0 else None,
            )
            ax.add_patch(box)
    ax.axhline(0.6, color="black", linestyle="--", linewidth=1, label="target 0.6")
    ax.axhline(0.7, color="grey", linestyle=":", linewidth=1, label="aim 0.7")
    ax.set_xlim(30, 160)
    ax.set_ylim(0.35, 0.8)
    ax.set_xlabel("the baseline's CPU time per request, µs (slower machine to the right)")
    ax.set_ylabel("ingest req/s, pipeline / bare aiohttp")
    ax.set_title(f"Ingest ratio by machine ({len(rows)} measurements, each box its runs' range)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    rows = machines((DOCS / "performance.md").read_text(encoding="utf-8"))
    path = DOCS / "ratios-by-machine.png"
    plot(rows, path)
    print(f"{len(rows)} measurements plotted into {path}")


if __name__ == "__main__":
    main()
