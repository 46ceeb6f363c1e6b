"""A worker's counters as a monitoring system reads them: JSON, Prometheus text, a human table.

The counters themselves are the worker's stats dict (worker/report.py's collect(): README "Statistics");
this module only renders them. Prometheus: the text exposition format (version 0.0.4), one metric
family per counter, labels `worker` (the stats file's name, unique in a node_exporter textfile
directory), `pair` (serve's queue pair) and `ring`/`reason` where a counter has them.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

# (family, type, help, key in a ring's counters)
RING_FAMILIES = (
    ("packets", "counter", "Packets moved (rx: host to guest, tx: guest to host)", "packets"),
    ("bytes", "counter", "Bytes moved, without the virtio-net header", "bytes"),
    ("chains", "counter", "Descriptor chains the driver made available and the worker took", "chains"),
    ("batches", "counter", "Batches the C core processed", "batches"),
    ("kicks", "counter", "Notifications the driver sent (kick eventfd)", "kicks"),
    ("notify_sent", "counter", "Used-buffer notifications the worker sent (call eventfd)", "notify_sent"),
    ("notify_suppressed", "counter", "Used-buffer notifications the driver's event index spared", "notify_suppressed"),
    ("rx_starved", "counter", "Times a frame waited for the driver to post receive buffers", "rx_starved"),
)
DROP_REASONS = ("fault", "bad_desc", "short", "hostfd", "oversize")
# (family, type, help, path in the stats dict)
WORKER_FAMILIES = (
    ("wakeups", "counter", "Times the worker woke from epoll", ("wakeups",)),
    ("lost_kicks", "counter", "Safety polls that found work no notification announced", ("lost_kicks",)),
    ("messages", "counter", "vhost-user messages handled", ("messages",)),
    ("uptime_seconds", "gauge", "Seconds since the worker started", ("uptime_s",)),
    ("dirty_log_writes", "counter", "Dirty-log writes (live migration)", ("dirty_log", "log_writes")),
    ("dirty_log_overflow", "counter", "Guest writes past the end of the dirty log", ("dirty_log", "log_overflow")),
    ("memory_regions", "gauge", "Guest memory regions mapped (memory hot-plug adds some)", ("memory", "regions")),
)
PREFIX = "vhostsplice_"


def _get(data: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _labels(**labels) -> str:
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items() if v is not None)
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> list[str]:
    full = PREFIX + name + ("_total" if kind == "counter" else "")
    lines = [f"# HELP {full} {help_}.", f"# TYPE {full} {kind}"]
    return lines + [f"{full}{labels} {_number(value)}" for labels, value in samples]


def _number(value) -> str:
    """Counters exactly (a float's %g would round 1234567 to 1.23457e+06), other values as Python prints them."""
    return str(int(value)) if isinstance(value, int) or float(value).is_integer() else repr(float(value))


def prometheus(workers: list[tuple[dict, dict]]) -> str:
    """Prometheus text for several workers' stats: [(labels, stats), ...] (labels: worker=, pair=)."""
    out: list[str] = []
    for name, kind, help_, key in RING_FAMILIES:
        out += _family(f"ring_{name}", kind, help_,
                       [(_labels(**lab, ring=ring), counters.get(key, 0)) for lab, st in workers
                        for ring, counters in sorted(st.get("rings", {}).items())])
    out += _family("ring_drops", "counter", "Frames dropped, by reason", [
        (_labels(**lab, ring=ring, reason=reason), counters.get(f"drops_{reason}", 0))
        for lab, st in workers for ring, counters in sorted(st.get("rings", {}).items()) for reason in DROP_REASONS])
    out += _family("ring_broken", "gauge", "1 when the guest corrupted the ring, with the reason (it stays unusable "
                   "until the device is reset)", [
        (_labels(**lab, ring=ring, reason=counters.get("broken")), 0 if counters.get("broken") is None else 1)
        for lab, st in workers for ring, counters in sorted(st.get("rings", {}).items())])
    for name, kind, help_, path in WORKER_FAMILIES:
        samples = [(_labels(**lab), _get(st, path)) for lab, st in workers]
        samples = [(lab, v) for lab, v in samples if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if samples:
            out += _family(name, kind, help_, samples)
    out += _family("refused", "counter", "Front-end connections closed unserved, by reason", [
        (_labels(**lab, reason=reason), n)
        for lab, st in workers for reason, n in sorted(st.get("refused", {}).items())])
    return "\n".join(out) + "\n"


def render(stats: dict, fmt: str, worker: str | None = None) -> str:
    """One worker's stats as the file `--stats-file` holds (FMT json or prometheus)."""
    if fmt == "prometheus":
        return prometheus([({"worker": worker}, stats)])
    return json.dumps(stats, sort_keys=True) + "\n"


@dataclass(frozen=True)
class StatsOutput:
    """--stats-file, --stats-format, --stats-interval."""

    path: str
    fmt: str = "json"
    interval: float | None = None


def device_text(pairs: list[tuple[int, dict]], fmt: str, worker: str | None) -> str:
    """serve's one file: every pair's stats, JSON {"pairs": {"0": {...}}} or Prometheus with pair labels."""
    if fmt == "prometheus":
        return prometheus([({"worker": worker, "pair": index}, stats) for index, stats in pairs])
    return json.dumps({"pairs": {str(index): stats for index, stats in pairs}}, sort_keys=True) + "\n"


def write_atomically(path: str, text: str) -> None:
    """Replace PATH with TEXT: a reader (a textfile collector, `vhostsplice stats`) never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def worker_name(stats_file: str | None) -> str | None:
    """The `worker` label: the stats file's name without its extension (vm1-net0.prom -> vm1-net0)."""
    return os.path.splitext(os.path.basename(stats_file))[0] if stats_file else None


# -- the human table: `vhostsplice stats FILE...` ------------------------------------------------------------
HEADER = ("file", "ring", "packets", "Mpps", "MB/s", "drops (by reason)", "kicks", "calls", "broken")


def read_stats(path: str) -> dict:
    """A stats file in either format `--stats-format` writes: JSON, or this module's Prometheus text
    (read back into the JSON shape: uptime_s and each ring's counters)."""
    with open(path) as f:
        text = f.read()
    if not text.lstrip().startswith("#"):
        data = json.loads(text)
        if isinstance(data, dict) and "pairs" in data:        # serve's device file: ring/pair rows
            return {"rings": {f"{ring}/{pair}": c for pair, st in sorted(data["pairs"].items())
                              for ring, c in st.get("rings", {}).items()},
                    "uptime_s": max((st.get("uptime_s") or 0 for st in data["pairs"].values()), default=0)}
        return data
    stats: dict = {"rings": {}}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        family, _, labels = name.partition("{")
        lab = dict(part.split("=", 1) for part in labels.rstrip("}").split(",") if "=" in part)
        lab = {k: v.strip('"') for k, v in lab.items()}
        key = family[len(PREFIX):].removesuffix("_total")
        if key == "uptime_seconds":
            stats["uptime_s"] = float(value)
        elif key.startswith("ring_") and "ring" in lab:
            ring = stats["rings"].setdefault(f"{lab['ring']}" + (f"/{lab['pair']}" if "pair" in lab else ""), {})
            field = f"drops_{lab.get('reason')}" if key == "ring_drops" else key[len("ring_"):]
            if key == "ring_broken":
                ring["broken"] = lab.get("reason", "yes") if float(value) else None
            else:
                ring[field] = int(float(value))
    return stats


def table(files: list[str], previous: dict | None = None) -> tuple[str, dict, list[OSError | ValueError]]:
    """A table of every ring of every file; rates since `previous` (the snapshot this returned last
    time), else averages since the worker started. Returns (text, snapshot for the next call, the
    errors of the files that could not be read: they are listed under the table)."""
    now, snap, rows, errors = time.monotonic(), {}, [], []
    for path in files:
        try:
            stats = read_stats(path)
        except OSError as exc:
            errors.append(exc)
            continue
        except ValueError as exc:
            errors.append(ValueError(f"{path}: not a stats file ({exc})"))
            continue
        for ring, c in sorted(stats.get("rings", {}).items()):
            packets, nbytes = c.get("packets", 0), c.get("bytes", 0)
            snap[(path, ring)] = (now, packets, nbytes)
            t0, p0, b0 = (previous or {}).get((path, ring), (now - (stats.get("uptime_s") or 0), 0, 0))
            dt = max(now - t0, 1e-9)
            drops = {r: c.get(f"drops_{r}", 0) for r in DROP_REASONS}
            why = ", ".join(f"{r} {n}" for r, n in drops.items() if n)
            rows.append((path, ring, str(packets), f"{(packets - p0) / dt / 1e6:.3f}",
                         f"{(nbytes - b0) / dt / 1e6:.1f}", f"{sum(drops.values())}" + (f" ({why})" if why else ""),
                         str(c.get("kicks", 0)), str(c.get("notify_sent", 0)),
                         "no" if c.get("broken") is None else f"yes ({c['broken']})"))
    widths = [max(len(r[i]) if i < len(r) else 0 for r in (HEADER, *rows)) for i in range(len(HEADER))]
    text = "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in (HEADER, *rows))
    return text + "\n" + "".join(f"unreadable: {exc}\n" for exc in errors), snap, errors


def watch(files: list[str], interval: float | None, echo) -> list:
    """Print the table once, or (interval) refresh it in place every INTERVAL seconds until interrupted,
    rates counted since the previous refresh. Returns the errors of the last table."""
    text, snap, errors = table(files)
    echo(text)
    while interval:
        time.sleep(interval)
        text, snap, errors = table(files, snap)
        echo("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S") + f"  every {interval:g} s (Ctrl-C ends)\n" + text)
    return errors
