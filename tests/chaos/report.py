"""The chaos run's report: chaos.json (everything), chaos.md (the figures), chaos.svg (frames the taps
received over time, and each restart). Plain SVG: no plotting library needed."""
from __future__ import annotations

import json
from pathlib import Path


def _footprints(samples: list[dict], rig: str, pid_of) -> list[tuple[int, int]]:
    """(RSS KiB, fds) of the process pid_of(sample) picks, first sample to last."""
    rows = []
    for s in samples:
        pid = pid_of(s)
        if s["rig"] == rig and pid in s["procs"]:
            rows.append((s["procs"][pid]["rss_kib"], s["procs"][pid]["fds"]))
    return rows


def _first_last(rows: list[tuple[int, int]], i: int) -> list[int] | None:
    return [rows[0][i], rows[-1][i]] if rows else None


def summarize(chaos, minutes: float | None) -> dict:
    """The figures: kills, gaps, back-off; the long-lived processes' RSS and fds first and last (serve and
    supervise: a leak shows there); the range over the workers sampled (each replacement is a new process,
    its RSS mostly the guest memory it touched)."""
    serve = [r for r in chaos.rounds if r["rig"] == "serve"]
    front = [r for r in chaos.rounds if r["rig"] == "supervise"]
    oldest = {rig: next((min(s["procs"], key=int) for s in chaos.samples if s["rig"] == rig and s["procs"]), None)
              for rig in ("serve", "supervise")}
    longlived = {rig: _footprints(chaos.samples, rig, lambda s, p=pid: p) for rig, pid in oldest.items()}
    workers = [v for s in chaos.samples for p, v in s["procs"].items() if p != oldest[s["rig"]]]
    return {
        "minutes": minutes, "worker_kills": len(serve), "front_end_kills": len(front),
        "both_pairs_down": sum(1 for r in serve if r["pairs_down"] == 2) // 2,
        "longest_outage_s": max((r["outage_s"] for r in chaos.rounds), default=None),
        "longest_restart_gap_s": max((r["restart_gap_s"] for r in chaos.rounds), default=None),
        "longest_backoff_s": max((r["backoff_s"] for r in serve), default=None),
        "backoff_resets": sum(1 for r in serve if r["stable"]),
        "serve_rss_kib_first_last": _first_last(longlived["serve"], 0),
        "serve_fds_first_last": _first_last(longlived["serve"], 1),
        "supervise_rss_kib_first_last": _first_last(longlived["supervise"], 0),
        "supervise_fds_first_last": _first_last(longlived["supervise"], 1),
        "worker_rss_kib_min_max": [min(w["rss_kib"] for w in workers), max(w["rss_kib"] for w in workers)]
        if workers else None,
        "worker_fds_min_max": [min(w["fds"] for w in workers), max(w["fds"] for w in workers)] if workers else None,
        "tap_ifindex_changes": len(set((s["rig"], s["tap"]["ifindex"]) for s in chaos.samples))
        - len({s["rig"] for s in chaos.samples}),
        "failures": chaos.failures,
    }


def svg(chaos) -> str:
    """Frames received by each rig's tap (cumulative) against time, a tick per restart."""
    w, h, pad = 900, 320, 50
    samples = chaos.samples
    t_end = max([s["t"] for s in samples] + [r["t"] for r in chaos.rounds] + [1.0])
    peak = max([s["tap"]["rx_packets"] for s in samples] + [1])
    x = lambda t: pad + (w - 2 * pad) * t / t_end                     # noqa: E731
    y = lambda v: h - pad - (h - 2 * pad) * v / peak                   # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
           f'font-size="12"><rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{pad}" y="20">frames received by the tap (cumulative, peak {peak:,}) and restarts '
           f'(ticks) over {t_end:.0f} s</text>',
           f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>']
    for rig, color in (("serve", "#1f77b4"), ("supervise", "#d62728")):
        pts = " ".join(f"{x(s['t']):.1f},{y(s['tap']['rx_packets']):.1f}" for s in samples if s["rig"] == rig)
        if pts:
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
            out.append(f'<text x="{w - pad - 80}" y="{40 if rig == "serve" else 56}" fill="{color}">{rig}</text>')
        for r in (r for r in chaos.rounds if r["rig"] == rig):
            out.append(f'<line x1="{x(r["t"]):.1f}" y1="{h - pad}" x2="{x(r["t"]):.1f}" y2="{h - pad + 8}" '
                       f'stroke="{color}"/>')
    out.append(f'<text x="{pad}" y="{h - 15}">0 s</text><text x="{w - pad - 30}" y="{h - 15}">{t_end:.0f} s</text>')
    return "\n".join(out + ["</svg>"]) + "\n"


def write_report(chaos, out: Path, *, minutes: float | None, command: str) -> dict:
    summary = summarize(chaos, minutes)
    (out / "chaos.json").write_text(json.dumps({"command": command, "summary": summary, "rounds": chaos.rounds,
                                                "samples": chaos.samples}, indent=1) + "\n")
    (out / "chaos.svg").write_text(svg(chaos))
    lines = [f"# Chaos run ({minutes} min)", "", f"`{command}`", "", "| figure | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in summary.items() if k != "failures"]
    lines += ["", f"Failures: {len(summary['failures'])}"] + [f"- {f}" for f in summary["failures"]]
    lines += ["", "![traffic and restarts](chaos.svg)", ""]
    (out / "chaos.md").write_text("\n".join(lines))
    return summary
