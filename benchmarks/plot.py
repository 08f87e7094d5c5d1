"""fanout.png: server CPU time per delivery for every system and burst size (log scale)."""

from __future__ import annotations

from pathlib import Path

from .results import SystemResult


def plot(results: dict[str, SystemResult], burst_ns: tuple[int, ...], path: Path) -> bool:
    """Write the bar chart; False (and nothing written) without matplotlib or data."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return False
    rows = [r for r in results.values() if any(r.burst(n) for n in burst_ns)]
    if not rows:
        return False
    width = 0.8 / len(burst_ns)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.1 * len(rows)), 5.0))
    for i, n in enumerate(burst_ns):
        xs, ys = [], []
        for x, r in enumerate(rows):
            b = r.burst(n)
            if b is not None and b.server_us > 0:
                xs.append(x + (i - (len(burst_ns) - 1) / 2) * width)
                ys.append(b.server_us)
        bars = ax.bar(xs, ys, width, label=f"N = {n:,}")
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    native = results.get("native")
    limit = native.burst(max(burst_ns)) if native else None
    if limit is not None:
        ax.axhline(limit.server_us, color="grey", linestyle=":", linewidth=1, label="no-ASGI limit")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel("server CPU µs per delivery (log)")
    ax.set_title("Fan-out: server CPU time per delivered message (lower is better)")
    ax.set_xticks(range(len(rows)), [r.label for r in rows], rotation=30, ha="right", fontsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
