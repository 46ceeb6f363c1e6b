#!/usr/bin/env python3
"""Fuzz driver: builds the C core with ASan+UBSan (or gcov), replays the seed corpora, then fuzzes.

    python3 tests/fuzz/run.py --seconds 60              # CI-sized: replay + 60 s split between targets
    python3 tests/fuzz/run.py --minutes 30 --save       # long run; new inputs go into the corpus
    python3 tests/fuzz/run.py --replay-only             # the corpora alone
    python3 tests/fuzz/run.py --gcov --seconds 120      # line coverage of the core reached (gcov)
    python3 tests/fuzz/run.py --target core --seed 7 --seconds 30
    python3 tests/fuzz/run.py --reproduce FILE --target core
    python3 tests/fuzz/run.py --pytest tests/core tests/protocol   # those suites on the ASan+UBSan core

Targets: `core` (harness.py: the split ring/datapath against the reference in ref.py), `core-packed`
(harness.PackedScenario: the packed ring against ref_packed.py) and `protocol` (proto.py: vhost-user
messages into channel.py/backend.py/memory.py); the fuzzing time is shared by SHARES. The engine is a small
structure-aware mutational fuzzer: inputs are bytes that the targets decode into scenarios; an input
that reaches a new feature (a reference-model line, a result, a counter bucket) joins the working
corpus. A failing input is written to --crash-dir (default /tmp/vs-fuzz-crashes) and the run exits 1.
The sanitizer run re-executes itself with LD_PRELOAD=libasan (Python is not built with ASan).
Prints one line per target: `fuzz <target>: N execs, C corpus, F features, S s` and a closing line.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")
SAN_FLAGS = "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -O1 -g"
GCOV_FLAGS = "--coverage -O0 -g"
TARGETS = ("core", "core-packed", "protocol")
SHARES = {"core": 0.45, "core-packed": 0.35, "protocol": 0.2}    # of the fuzzing time, with every target
INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x01\x00", b"\xff\xff", b"\x00\x80",
               b"\x10\x00\x00\x00", b"\xff\xff\xff\xff", b"\xf0\xff\xff\xff")


def build(kind: str, out: str) -> str:
    """Build vhostsplice._vs_core with sanitizers or gcov into out/lib (never the in-tree .so)."""
    env = dict(os.environ, VS_CFLAGS=SAN_FLAGS if kind == "asan" else GCOV_FLAGS)
    if kind == "gcov":
        env["LDFLAGS"] = (env.get("LDFLAGS", "") + " --coverage").strip()
    lib, tmp = os.path.join(out, "lib"), os.path.join(out, "tmp")
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", lib, "--build-temp", tmp],
                   cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return lib


def libasan() -> str:
    path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True,
                          check=True).stdout.strip()
    if not os.path.isabs(path):
        raise SystemExit("run.py: gcc has no libasan.so (Debian: apt-get install gcc, it ships libasan8)")
    return path


def use_core(lib: str | None) -> None:
    """With `lib`: vhostsplice from this source tree, its core the one built into `lib`. Without: the
    vhostsplice that `import` finds (installed, or the source tree with an in-tree build)."""
    sys.path.insert(0, HERE)
    if lib:
        sys.path.insert(0, ROOT)
        import vhostsplice
        vhostsplice.__path__.insert(0, os.path.join(lib, "vhostsplice"))


# -- the engine ----------------------------------------------------------------------------------------
def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(1 + rng.randrange(4)):
        k = rng.randrange(8)
        pos = rng.randrange(len(b) + 1)
        if k == 0 and b:
            b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif k == 1 and b:
            b[min(pos, len(b) - 1)] = rng.randrange(256)
        elif k == 2:
            b[pos:pos] = rng.randbytes(1 + rng.randrange(8))
        elif k == 3 and b:
            del b[pos:pos + 1 + rng.randrange(8)]
        elif k == 4:
            v = rng.choice(INTERESTING)
            b[pos:pos + len(v)] = v
        elif k == 5 and pool:
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            b[pos:] = other[cut:]
        elif k == 6 and len(b) > 2:
            a = rng.randrange(len(b))
            n = 1 + rng.randrange(min(16, len(b) - a))
            b[pos:pos] = b[a:a + n]
        else:
            b += rng.randbytes(1 + rng.randrange(32))
    return bytes(b[:4096])


class LineCoverage:
    """Lines of the given files run while an input executes: the engine's feedback."""

    def __init__(self, files):
        self.files = {os.path.abspath(f) for f in files}
        self.seen: set = set()

    def _global(self, frame, event, arg):
        if frame.f_code.co_filename in self.files:
            return self._local
        return None

    def _local(self, frame, event, arg):
        if event == "line":
            self.seen.add((frame.f_code.co_filename, frame.f_lineno))
        return self._local

    def run(self, fn, data):
        self.seen = set()
        sys.settrace(self._global)
        try:
            fn(data)
        finally:
            sys.settrace(None)
        return self.seen


def load_corpus(target: str) -> list[tuple[str, bytes]]:
    d = os.path.join(CORPUS, target)
    out = []
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        with open(os.path.join(d, name), "rb") as f:
            out.append((name, f.read()))
    return out


def save(d: str, data: bytes) -> str:
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, hashlib.sha1(data).hexdigest()[:16])
    with open(path, "wb") as f:
        f.write(data)
    return path


def fuzz_target(name: str, fn, feedback_files, seconds: float, rng, args) -> dict:
    cov = LineCoverage(feedback_files)
    current = os.path.join(args.crash_dir, f".current-{name}")
    os.makedirs(args.crash_dir, exist_ok=True)
    features: set = set()
    pool: list[bytes] = []
    execs = 0

    def one(data: bytes) -> set:
        nonlocal execs
        with open(current, "wb") as f:       # if the process dies (SIGSEGV, ASan), this is the input
            f.write(data)
        execs += 1
        try:
            return cov.run(fn, data) | set(getattr(fn, "last_features", lambda: ())())
        except BaseException:
            path = save(args.crash_dir, data)
            print(f"fuzz {name}: FAILING INPUT saved to {path}", file=sys.stderr)
            raise

    covers: list[tuple[bytes, set]] = []
    for _, data in load_corpus(name):
        new = one(data)
        features |= new
        pool.append(data)
        covers.append((data, new))
    replayed = execs
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        base = rng.choice(pool) if pool and rng.randrange(8) else rng.randbytes(rng.randrange(8, 200))
        data = mutate(rng, base, pool)
        new = one(data)
        if not new <= features:
            features |= new
            pool.append(data)
            covers.append((data, new))
    os.unlink(current)
    if args.save:
        write_corpus(name, covers)
    return {"target": name, "replayed": replayed, "execs": execs, "corpus": len(pool),
            "features": len(features), "seconds": round(time.monotonic() - start, 1)}


def write_corpus(name: str, covers: list[tuple[bytes, set]]) -> None:
    """Rewrite tests/fuzz/corpus/<name> as a small set of inputs that reaches every feature seen
    (greedy set cover, smaller inputs first among equals)."""
    left = set().union(*(f for _, f in covers)) if covers else set()
    chosen = []
    while left:
        data, feats = max(covers, key=lambda c: (len(c[1] & left), -len(c[0])))
        if not feats & left:
            break
        chosen.append(data)
        left -= feats
    d = os.path.join(CORPUS, name)
    shutil.rmtree(d, ignore_errors=True)
    for data in chosen:
        save(d, data)
    print(f"fuzz {name}: corpus rewritten: {len(chosen)} inputs", flush=True)


def gcov_report(lib_dir: str) -> dict:
    objdir = os.path.join(os.path.dirname(lib_dir), "tmp", "vhostsplice", "_core")
    out = {}
    from vhostsplice._core_build import SOURCES    # the build's list: every C file of the core
    for src in SOURCES:
        res = subprocess.run(["gcov", "-n", "-o", objdir, os.path.join(ROOT, "vhostsplice", "_core", src)],
                             capture_output=True, text=True, cwd=objdir)
        for block in res.stdout.split("File '")[1:]:
            fname, rest = block.split("'", 1)
            if os.path.basename(fname) == src and "Lines executed:" in rest:
                pct, total = rest.split("Lines executed:")[1].split("\n")[0].split("% of ")
                out[src] = {"lines": int(total), "executed_pct": float(pct)}
    return out


def child(args) -> int:
    lib = os.environ.get("VS_FUZZ_LIB") or None
    use_core(lib)
    import logging
    logging.getLogger("vhostsplice").setLevel(logging.CRITICAL)   # handlers log warnings on bad input
    import harness
    import proto
    from vhostsplice import _vs_core
    from vhostsplice.device.datapath import Datapath
    print(f"fuzz: core {_vs_core.__file__}", flush=True)
    rng = random.Random(args.seed)
    max_len = 1 << 20
    feats: set = set()

    def core(data: bytes) -> None:
        feats.clear()
        feats.update(harness.run_one(data, Datapath, max_len).features)

    def core_packed(data: bytes) -> None:
        feats.clear()
        feats.update(harness.run_one(data, Datapath, max_len, scenario=harness.PackedScenario).features)

    core.last_features = core_packed.last_features = lambda: feats
    targets = {
        "core": (core, [harness.__file__, harness.ref.__file__]),
        "core-packed": (core_packed, [harness.__file__, harness.ref.__file__, harness.rp.__file__]),
        "protocol": (proto.run_one, [proto.__file__] + proto.feedback_files()),
    }
    chosen = list(targets) if args.target == "all" else [args.target]
    if args.reproduce:
        with open(args.reproduce, "rb") as f:
            targets[chosen[0]][0](f.read())
        print(f"fuzz {chosen[0]}: {args.reproduce} passes")
        return 0
    seconds = 0 if args.replay_only else args.seconds + 60 * args.minutes
    results = []
    for name in chosen:
        share = seconds if len(chosen) == 1 else seconds * SHARES[name]
        fn, files = targets[name]
        r = fuzz_target(name, fn, files, share, rng, args)
        results.append(r)
        print(f"fuzz {name}: {r['execs']} execs ({r['replayed']} corpus replays), {r['corpus']} corpus, "
              f"{r['features']} features, {r['seconds']} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def show_reports(crash_dir: str) -> bool:
    """Print the sanitizer reports of the run (ASan/UBSan write them to crash_dir/sanitizer.<pid>)."""
    found = False
    for f in sorted(os.listdir(crash_dir)) if os.path.isdir(crash_dir) else []:
        if f.startswith("sanitizer."):
            with open(os.path.join(crash_dir, f), errors="replace") as fh:
                print(f"== {f}\n{fh.read()[-6000:]}", file=sys.stderr)
            found = True
    return found


def run_pytest(pytest_args: list[str], env: dict) -> int:
    """pytest on this source tree with the core from VS_FUZZ_LIB: a sitecustomize on PYTHONPATH puts that
    build first on vhostsplice.__path__ before any test imports the datapath."""
    lib = env.get("VS_FUZZ_LIB")
    if lib:
        site = os.path.join(os.path.dirname(lib), "site")
        os.makedirs(site, exist_ok=True)
        with open(os.path.join(site, "sitecustomize.py"), "w") as f:
            f.write("import vhostsplice\n"
                    f"vhostsplice.__path__.insert(0, {os.path.join(lib, 'vhostsplice')!r})\n")
        env["PYTHONPATH"] = os.pathsep.join([site, ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    code = ("import sys, pytest; from vhostsplice import _vs_core; "
            "print('pytest on core', _vs_core.__file__, flush=True); sys.exit(pytest.main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code] + pytest_args, cwd=ROOT, env=env).returncode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=0, help="fuzzing time after the corpus replay")
    ap.add_argument("--minutes", type=float, default=0, help="added to --seconds")
    ap.add_argument("--target", choices=("all",) + TARGETS, default="all")
    ap.add_argument("--replay-only", action="store_true", help="replay the corpora, do not fuzz")
    ap.add_argument("--seed", type=int, default=None, help="engine seed (default: random, printed)")
    ap.add_argument("--save", action="store_true", help="add inputs with new features to tests/fuzz/corpus")
    ap.add_argument("--crash-dir", default="/tmp/vs-fuzz-crashes")
    ap.add_argument("--no-sanitize", action="store_true", help="use the installed/in-tree core as it is")
    ap.add_argument("--gcov", action="store_true", help="build the core with gcov and report its line coverage")
    ap.add_argument("--build-dir", default="/tmp/vs-fuzz-build")
    ap.add_argument("--reproduce", help="run one saved input of --target and exit")
    ap.add_argument("--json", help="write the per-target numbers here")
    ap.add_argument("--pytest", nargs=argparse.REMAINDER,
                    help="run pytest with these arguments on the sanitizer-built core instead of fuzzing")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    if args.child:
        return child(args)
    kind = "gcov" if args.gcov else None if args.no_sanitize else "asan"
    env = dict(os.environ)
    if kind:
        out = os.path.join(args.build_dir, kind)
        env["VS_FUZZ_LIB"] = build(kind, out)
    report = os.path.join(args.crash_dir, "sanitizer")
    if kind == "asan":
        # Reports go to files (report.<pid>): pytest captures stderr and an abort would lose them.
        os.makedirs(args.crash_dir, exist_ok=True)
        for f in os.listdir(args.crash_dir):
            if f.startswith("sanitizer."):
                os.unlink(os.path.join(args.crash_dir, f))
        env["LD_PRELOAD"] = libasan()
        env["ASAN_OPTIONS"] = ("detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1:"
                               f"log_path={report}")
        env["UBSAN_OPTIONS"] = f"halt_on_error=1:print_stacktrace=1:log_path={report}"
    if kind == "gcov":
        for root, _dirs, files in os.walk(os.path.join(args.build_dir, kind)):
            for f in files:
                if f.endswith(".gcda"):
                    os.unlink(os.path.join(root, f))
    if args.pytest is not None:
        rc = run_pytest(args.pytest, env)
        show_reports(args.crash_dir)
        return rc
    print(f"fuzz: core build {kind or 'as installed'}, seed {args.seed}", flush=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--child"] + [a for a in (argv or sys.argv[1:])]
    if "--seed" not in cmd:
        cmd += ["--seed", str(args.seed)]
    rc = subprocess.run(cmd, env=env).returncode
    if show_reports(args.crash_dir):
        rc = rc or 1
    if rc != 0:
        for name in TARGETS:
            cur = os.path.join(args.crash_dir, f".current-{name}")
            if os.path.exists(cur):
                with open(cur, "rb") as f:
                    path = save(args.crash_dir, f.read())
                os.unlink(cur)
                print(f"fuzz {name}: the process died (rc {rc}); input saved to {path}", file=sys.stderr)
        print("fuzz: 0 passed, 1 failed")
        return 1
    if kind == "gcov":
        report = gcov_report(env["VS_FUZZ_LIB"])
        for src, r in report.items():
            print(f"gcov {src}: {r['executed_pct']}% of {r['lines']} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
