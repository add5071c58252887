"""Memory of an idle `hashsvc serve`: RSS and PSS of the server process and of
each of its hashing workers, with a set of PDQ hashes loaded.

    .venv/bin/python bench/memory.py             # 100k PDQ hashes, 2 workers
    .venv/bin/python bench/memory.py --short     # 10k hashes (CI, < 60 s)
    .venv/bin/python bench/memory.py --hashes 1000000 --workers 4

Starts `python -m hashsvc serve` on 127.0.0.1 with a SQLite store in a
temporary directory, loads the hashes (random 256-bit PDQ, one entry each, as
a CSV file through `hashsvc load`), waits until the index holds them all and
the server and its workers have used no CPU for a few seconds, then reads
/proc/PID/smaps_rollup. PSS shares each page among the processes that map it
(the workers and the server map the same libraries), so the PSS total is what
the group costs the machine; the RSS total counts shared pages once per process.
Other programs on the machine that map the same libraries (tests, another
server on the same venv) take their share too: PSS varies with them, RSS not.
Measured three times: right after the load; after a restart on the same
store (the index read back at start-up, nothing else done: the steady idle
state); and after that server has matched one small upload of each kind
(image, video, audio, PDF), when its workers have loaded the decoders they
import at first use. Each process's line also names the decoder libraries it
has mapped (FFmpeg, MuPDF, Chromaprint, PDQ, Pillow): the server maps none of
them, ever (the run fails if it does). Every process started here is stopped,
also when something fails.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import av
import grpc
import numpy as np
import pymupdf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hashsvc.v1 import hashsvc_pb2 as pb  # noqa: E402
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc  # noqa: E402

READY_SECONDS = 120.0  # start-up, index load included
LOAD_TIMEOUT_SECONDS = 600.0
# Idle: the server and its workers together used less than this much CPU
# (seconds) in each of IDLE_SAMPLES consecutive one-second samples.
IDLE_CPU_SECONDS = 0.02
IDLE_SAMPLES = 3
IDLE_TIMEOUT_SECONDS = 120.0
TICKS = os.sysconf("SC_CLK_TCK")
# Shared objects that only hashing needs, by a part of their file name.
DECODER_LIBRARIES = {
    "av": ("/av/_core",),
    "pymupdf": ("/libmupdf",),
    # libchromaprint brings the system's FFmpeg, and with it cairo and pango.
    "chromaprint": ("/libchromaprint",),
    "pdqhash": ("/pdqhash/",),
    "PIL": ("/PIL/_imaging",),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hashsvc_cli(*args: str, token: str = "") -> str:
    env = {**os.environ, "HASHSVC_TOKEN": token} if token else None
    done = subprocess.run(
        [sys.executable, "-m", "hashsvc", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=LOAD_TIMEOUT_SECONDS,
    )
    if done.returncode != 0:
        raise RuntimeError(f"hashsvc {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def write_hashes(path: Path, count: int) -> None:
    """`count` random PDQ hashes as CSV, each its own entry."""
    rng = np.random.default_rng(17)
    hashes = rng.integers(0, 256, size=(count, 32), dtype=np.uint8)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["signal_type", "signal_value", "entry"])
        for no, value in enumerate(hashes):
            out.writerow(["pdq", value.tobytes().hex(), f"memory-{no:07d}"])


class Server:
    """One `python -m hashsvc serve` on loopback; ready when health says SERVING."""

    def __init__(self, db_url: str, workers: int, log_path: Path) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hashsvc", "serve", "--listen", self.address,
             "--db", db_url, "--workers", str(workers)],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.seen_children: set[int] = set()
        self.stopped = False

    def wait_ready(self) -> None:
        started = time.monotonic()
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() - started < READY_SECONDS:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the server exited with {self.proc.returncode}")
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"the server on {self.address} was not ready in {READY_SECONDS:g} s")

    def children(self) -> list[int]:
        found = [pid for pid in _pids() if _parent_of(pid) == self.proc.pid]
        self.seen_children.update(found)
        return sorted(found)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 30 s; workers still alive after their
        server has gone (they leave within a second) are killed too."""
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        if self.proc.poll() is None:
            self.children()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 5
        for pid in sorted(self.seen_children):
            while _is_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _is_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.log.close()
        return self.proc.returncode


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()


def _parent_of(pid: int) -> int:
    try:
        return int(_stat_fields(pid)[1])
    except (OSError, IndexError, ValueError):
        return 0


def _is_alive(pid: int) -> bool:
    try:
        return _stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def _cpu_ticks(pid: int) -> int:
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def wait_indexed(address: str, token: str, count: int) -> float:
    """Seconds until GetStats counts `count` indexed PDQ signals."""
    started = time.monotonic()
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(address) as channel:
        curation = pb_grpc.CurationStub(channel)
        while time.monotonic() - started < LOAD_TIMEOUT_SECONDS:
            stats = curation.GetStats(pb.GetStatsRequest(), metadata=metadata, timeout=30)
            indexed = {c.signal_type: c.count for c in stats.indexed_signals}
            if indexed.get("pdq", 0) >= count:
                return time.monotonic() - started
            time.sleep(0.5)
    raise RuntimeError(f"the index did not reach {count} PDQ signals")


def wait_idle(server: Server) -> float:
    started = time.monotonic()
    quiet = 0
    before = sum(_cpu_ticks(pid) for pid in [server.proc.pid, *server.children()])
    while quiet < IDLE_SAMPLES:
        if time.monotonic() - started > IDLE_TIMEOUT_SECONDS:
            raise RuntimeError(f"the server was not idle within {IDLE_TIMEOUT_SECONDS:g} s")
        time.sleep(1.0)
        now = sum(_cpu_ticks(pid) for pid in [server.proc.pid, *server.children()])
        quiet = quiet + 1 if (now - before) / TICKS < IDLE_CPU_SECONDS else 0
        before = now
    return time.monotonic() - started


@dataclass(frozen=True)
class Usage:
    pid: int
    role: str
    rss_kb: int
    pss_kb: int
    decoders: tuple[str, ...]


def usage(pid: int, role: str) -> Usage:
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                values[name] = int(rest.split()[0])
    with open(f"/proc/{pid}/maps") as f:
        mapped = f.read()
    decoders = tuple(
        name for name, parts in DECODER_LIBRARIES.items() if any(part in mapped for part in parts)
    )
    return Usage(pid, role, values["Rss"], values["Pss"], decoders)


def role_of(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    if "resource_tracker" in cmdline:
        return "resource tracker"
    if "multiprocessing" in cmdline:
        return "hashing worker"
    return "child"


def measure(server: Server) -> list[Usage]:
    rows = [usage(server.proc.pid, "server")]
    rows += [usage(pid, role_of(pid)) for pid in server.children()]
    return rows


def sample_media() -> dict[str, bytes]:
    """One small upload of each kind, made here: this process may load the
    decoders (it is not measured), the server must not."""
    rng = np.random.default_rng(3)
    picture = io.BytesIO()
    blocks = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(np.kron(blocks, np.ones((20, 20, 1), np.uint8))).save(picture, "PNG")
    movie = io.BytesIO()
    with av.open(movie, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        for _scene in range(3):
            scene = rng.integers(0, 256, (9, 16, 3), dtype=np.uint8)
            rgb = np.kron(scene, np.ones((20, 20, 1), np.uint8))
            for _frame in range(25):
                out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    # A melody of held notes (Chromaprint refuses silence and constant tones).
    rate = 11025
    notes = [
        np.sin(2 * np.pi * 220 * 2 ** (rng.integers(0, 24) / 12) * np.arange(rate // 3) / rate)
        for _ in range(30)
    ]
    sound = io.BytesIO()
    with wave.open(sound, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.concatenate(notes) * 9000).astype("<i2").tobytes())
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "a page of text " * 30)
    return {
        "IMAGE": picture.getvalue(),
        "VIDEO": movie.getvalue(),
        "AUDIO": sound.getvalue(),
        "PDF": doc.tobytes(),
    }


def match_each_kind(address: str, token: str) -> None:
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(address) as channel:
        matcher = pb_grpc.MatcherStub(channel)
        for kind, content in sample_media().items():
            request = pb.MatchRequest(media=pb.Media(content=content))
            reply = matcher.Match(request, metadata=metadata, timeout=60)
            if pb.MediaType.Name(reply.media_type) != kind:
                raise RuntimeError(f"a {kind} upload was hashed as {reply.media_type}")


def report(title: str, rows: list[Usage]) -> None:
    print(title)
    print(f"  {'process':<18} {'pid':>8} {'RSS MB':>8} {'PSS MB':>8}  decoder libraries mapped")
    for row in rows:
        print(
            f"  {row.role:<18} {row.pid:>8} {row.rss_kb / 1024:>8.1f} {row.pss_kb / 1024:>8.1f}"
            f"  {', '.join(row.decoders) or 'none'}"
        )
    rss = sum(r.rss_kb for r in rows) / 1024
    pss = sum(r.pss_kb for r in rows) / 1024
    print(f"  {'total':<18} {'':>8} {rss:>8.1f} {pss:>8.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="10k hashes (CI)")
    parser.add_argument("--hashes", type=int, default=0, help="PDQ hashes (default 100k)")
    parser.add_argument("--workers", type=int, default=2, help="hashing workers (default 2)")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    count = args.hashes or (10_000 if args.short else 100_000)

    figures = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="hashsvc-memory-") as tmp:
        db_url = f"sqlite:///{tmp}/memory.db"
        log_path = Path(tmp) / "server.log"
        hashes = Path(tmp) / "hashes.csv"
        write_hashes(hashes, count)
        created = hashsvc_cli(
            "token", "create", "--role", "admin", "--name", "memory", "--db", db_url, "--json"
        )
        token = json.loads(created)["token"]
        server = None
        try:
            server = Server(db_url, args.workers, log_path)
            server.wait_ready()
            hashsvc_cli("sets", "create", "memory", "--server", server.address, token=token)
            started = time.monotonic()
            hashsvc_cli("load", "--set", "memory", "--quiet", "--server", server.address,
                        str(hashes), token=token)  # fmt: skip
            loaded = time.monotonic() - started
            indexed = wait_indexed(server.address, token, count)
            idle = wait_idle(server)
            print(
                f"{count:,} PDQ hashes loaded in {loaded:.1f} s, indexed {indexed:.1f} s later;"
                f" idle after {idle:.1f} s; {args.workers} hashing workers"
            )
            rows = measure(server)
            report("after the load:", rows)
            figures["after_load"] = [r.__dict__ for r in rows]
            server.stop()

            server = Server(db_url, args.workers, log_path)
            started = time.monotonic()
            server.wait_ready()
            ready = time.monotonic() - started
            wait_indexed(server.address, token, count)
            idle = wait_idle(server)
            rows = measure(server)
            title = f"restarted on the same store (ready in {ready:.1f} s, idle {idle:.1f} s):"
            report(title, rows)
            figures["restarted"] = [r.__dict__ for r in rows]

            match_each_kind(server.address, token)
            wait_idle(server)
            rows = measure(server)
            report("after one upload of each kind (image, video, audio, PDF):", rows)
            figures["after_each_kind"] = [r.__dict__ for r in rows]
            decoders = {d for phase in figures.values() for r in phase
                        if r["role"] == "server" for d in r["decoders"]}  # fmt: skip
            if decoders:
                raise RuntimeError(f"the server process mapped {', '.join(sorted(decoders))}")
        except Exception as exc:
            failed = True
            print(f"THE MEMORY BENCHMARK FAILED: {exc}", file=sys.stderr)
            if log_path.exists():
                tail = log_path.read_text(errors="replace").splitlines()[-20:]
                print("server log (last lines):", *tail, sep="\n  ", file=sys.stderr)
        finally:
            if server is not None:
                server.stop()
    if args.json and not failed:
        print(json.dumps({"hashes": count, "workers": args.workers, **figures}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
