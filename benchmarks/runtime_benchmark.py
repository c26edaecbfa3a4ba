"""Load benchmark of the real service: concurrent customer conversations over the REST API.

Starts `supportbot serve` as a subprocess on a free port with a fresh SQLite store (or the
PostgreSQL store given by --store-url), waits for GET /readyz, then for each concurrency level
runs that many simulated conversations at once for --seconds. Each conversation sends a
customer message to POST /api/v1/messages, waits for the answer and sends the next one at once;
when it has sent its length in messages (drawn from the sample conversations, or
--messages-per-conversation) a new customer with a new sender id takes its place. Messages are
customer texts of data/utterances.csv and data/conversations.jsonl, picked by a seeded random
generator, so both modes of a level send the same texts in the same order.

An escalated conversation gets no bot replies (`"replies": []`): such a message is counted as
completed and reported as silent. Prints figures only (no assertions), per level and mode:
throughput, client-side latency percentiles, errors, silent replies, the server's CPU time per
message and its peak RSS, and the server's own /metrics stage averages; then Markdown tables.
With --compare-batching the same levels run again on a fresh server and store with
micro-batching off (SUPPORTBOT_NLU__MAX_BATCH=1, SUPPORTBOT_NLU__MAX_WAIT_MS=0) and the
throughput ratio is printed side by side.

With --baseline REF the given git revision is checked out into a temporary worktree and served
first, then the working tree, one after the other in the same run, on the same models, index,
messages and seed (each on a fresh store); both tables and the ratios (working tree /
baseline) are printed. The baseline runs with this virtualenv's packages (`python -m
bot.app.cli serve` with the worktree as its working directory and first on PYTHONPATH), so
a revision that needs other dependencies is not comparable this way.

    .venv/bin/python benchmarks/runtime_benchmark.py --models models --levels 1,10,100 \\
        --seconds 20 --compare-batching
    .venv/bin/python benchmarks/runtime_benchmark.py --models models --baseline f7dfd9b
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("store", "nlu", "retrieval", "total")
STAGE_SAMPLE = re.compile(r'^supportbot_stage_seconds_(sum|count)\{stage="([^"]+)"\}$')
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- messages ----------------------------------------------------------------------------


def read_customer_texts(data: Path) -> list[str]:
    """Distinct customer texts of utterances.csv and the customer turns of conversations.jsonl."""
    texts: list[str] = []
    utterances = data / "utterances.csv"
    conversations = data / "conversations.jsonl"
    for path in (utterances, conversations):
        if not path.is_file():
            sys.exit(f"{path} does not exist; pass the project's data folder with --data")
    with utterances.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if "text" not in (reader.fieldnames or []):
            sys.exit(f'{utterances}: no "text" column (header: {reader.fieldnames})')
        texts += [row["text"].strip() for row in reader]
    for number, line in enumerate(conversations.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            sys.exit(f"{conversations} line {number}: not valid JSON ({exc.msg})")
        texts += [
            str(m.get("text", "")).strip()
            for m in record.get("messages", [])
            if m.get("role") == "customer"
        ]
    # dict keeps the first occurrence in file order, so the seeded picks are reproducible.
    return list(dict.fromkeys(t for t in texts if t))


def conversation_lengths(data: Path) -> list[int]:
    """Customer turns per sample conversation: the length distribution of simulated ones."""
    lengths = []
    for line in (data / "conversations.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            messages = json.loads(line).get("messages", [])
            turns = sum(m.get("role") == "customer" for m in messages)
            if turns:
                lengths.append(turns)
    return lengths or [2]


# -- the server process ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process in bytes (empty once it has exited)."""
    out = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of all threads of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next peak is per level."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {sample name with labels: value}."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def entry_point(root: Path) -> str:
    """`module:function` of the `supportbot` console script in `root`'s pyproject.toml."""
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
        return str(project["project"]["scripts"]["supportbot"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "bot.app.cli:main"


class Server:
    """`supportbot serve` in a subprocess, its output in a log file."""

    def __init__(
        self, env: dict[str, str], workdir: Path, port: int, label: str, root: Path = ROOT
    ) -> None:
        self.env = env
        self.root = root
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = workdir / f"server-{label.replace(' ', '-')}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> list[str]:
        script = Path(sys.executable).with_name("supportbot")
        if self.root == ROOT and script.is_file():
            return [str(script), "serve", "--port", str(self.port)]
        # The `supportbot` entry point of the revision in `root` (its module moved over time).
        module, _, function = entry_point(self.root).partition(":")
        run = f"import sys; from {module} import {function}; sys.exit({function}())"
        return [sys.executable, "-c", run, "serve", "--port", str(self.port)]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def start(self, session: aiohttp.ClientSession, timeout: float) -> float:
        """Start the process and wait until /readyz answers 200; returns the seconds it took."""
        started = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"the server exited with status {self.process.returncode} before it was "
                    f"ready; last lines of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                async with session.get(f"{self.base}/readyz") as response:
                    if response.status == 200:
                        return time.perf_counter() - started
            except aiohttp.ClientError:
                pass  # not listening yet: the models load before the port opens
            await asyncio.sleep(0.5)
        await self.stop()
        raise RuntimeError(
            f"the server was not ready after {timeout:.0f} s (raise --start-timeout); last "
            f"lines of {self.log_path}:\n{self.log_tail()}"
        )

    async def metrics(self, session: aiohttp.ClientSession) -> dict[str, float]:
        async with session.get(f"{self.base}/metrics") as response:
            response.raise_for_status()
            return parse_metrics(await response.text())

    async def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL after 30 s); returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, 30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
        return self.process.returncode


# -- load ------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the conversations of one level saw."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    silent: int = 0
    routes: Counter[str] = field(default_factory=Counter)
    conversations: int = 0

    @property
    def messages(self) -> int:
        return len(self.latencies_ms)


@dataclass
class LevelResult:
    mode: str
    level: int
    tally: Tally
    seconds: float
    server_cpu_s: float
    client_cpu_s: float
    peak_rss: int
    peak_is_per_level: bool
    sampled_rss: int
    stages: dict[str, tuple[float, float]]  # stage -> (sum seconds, count)
    server_errors: float
    load_average: float
    release: str = ""  # with --baseline: "baseline <rev>" or "working tree"

    @property
    def throughput(self) -> float:
        return self.tally.messages / self.seconds if self.seconds else 0.0

    @property
    def label(self) -> str:
        return f"{self.release}: {self.mode}" if self.release else self.mode

    def percentile(self, q: float) -> float:
        values = self.tally.latencies_ms
        return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def send(
    session: aiohttp.ClientSession,
    url: str,
    sender: str,
    text: str,
    client_id: str,
    tally: Tally,
) -> None:
    """One customer message; the latency is counted only for a 200 answer."""
    started = time.perf_counter()
    try:
        async with session.post(
            url, json={"sender": sender, "text": text, "client_id": client_id}
        ) as response:
            body = await response.read()
            elapsed = (time.perf_counter() - started) * 1000
            if response.status != 200:
                tally.errors[f"HTTP {response.status}"] += 1
                return
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.errors[type(exc).__name__] += 1
        await asyncio.sleep(0.05)  # a dead or refusing server must not turn this into a spin
        return
    tally.latencies_ms.append(elapsed)
    replies = json.loads(body)["replies"]
    if not replies:
        tally.silent += 1
    for reply in replies:
        # The service's per-message boundary answers a failure with a 200 and a system reply.
        tally.routes[reply["route"] or reply["role"]] += 1


async def converse(
    session: aiohttp.ClientSession,
    url: str,
    prefix: str,
    slot: int,
    texts: Sequence[str],
    lengths: Sequence[int],
    deadline: float,
    seed: str,
    tally: Tally,
) -> None:
    """One concurrency slot: conversation after conversation until the deadline."""
    rng = random.Random(f"{seed}:{slot}")
    number = 0
    while time.monotonic() < deadline:
        sender = f"{prefix}-s{slot}-c{number}"
        tally.conversations += 1
        for turn in range(rng.choice(lengths)):
            if time.monotonic() >= deadline:
                return
            await send(session, url, sender, rng.choice(texts), f"{sender}-m{turn}", tally)
        number += 1


async def sample_rss(server: Server, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], proc_status(server.pid).get("VmRSS", 0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


def stage_totals(samples: dict[str, float]) -> dict[str, tuple[float, float]]:
    totals: dict[str, list[float]] = {}
    for name, value in samples.items():
        match = STAGE_SAMPLE.match(name)
        if match:
            kind, stage = match.groups()
            totals.setdefault(stage, [0.0, 0.0])[kind == "count"] = value
    return {stage: (v[0], v[1]) for stage, v in totals.items()}


async def run_level(
    server: Server,
    mode: str,
    level: int,
    seconds: float,
    texts: Sequence[str],
    lengths: Sequence[int],
    seed: int,
    token: str,
    admin: aiohttp.ClientSession,
) -> LevelResult:
    url = f"{server.base}/api/v1/messages"
    before = await server.metrics(admin)
    per_level_peak = reset_peak_rss(server.pid)
    cpu_before = proc_cpu_seconds(server.pid)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    client_before = usage.ru_utime + usage.ru_stime
    tally = Tally()
    sampled = [0]
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(server, sampled, stop))
    connector = aiohttp.TCPConnector(limit=level)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(
            *(
                converse(
                    session,
                    url,
                    f"bench-{token}-{mode}-L{level}",
                    slot,
                    texts,
                    lengths,
                    deadline,
                    f"{seed}:{level}",
                    tally,
                )
                for slot in range(level)
            )
        )
        elapsed = time.monotonic() - started
    stop.set()
    await sampler
    if not server.alive():
        raise RuntimeError(f"the server died during level {level}:\n{server.log_tail()}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    after = await server.metrics(admin)
    old = stage_totals(before)
    stages = {
        stage: (total - old.get(stage, (0.0, 0.0))[0], count - old.get(stage, (0.0, 0.0))[1])
        for stage, (total, count) in stage_totals(after).items()
    }
    errors_key = "supportbot_errors_total"
    return LevelResult(
        mode=mode,
        level=level,
        tally=tally,
        seconds=elapsed,
        server_cpu_s=proc_cpu_seconds(server.pid) - cpu_before,
        client_cpu_s=usage.ru_utime + usage.ru_stime - client_before,
        peak_rss=proc_status(server.pid).get("VmHWM", 0),
        peak_is_per_level=per_level_peak,
        sampled_rss=sampled[0],
        stages=stages,
        server_errors=after.get(errors_key, 0.0) - before.get(errors_key, 0.0),
        load_average=os.getloadavg()[0],
    )


async def warm_up(server: Server, texts: Sequence[str], count: int, token: str) -> None:
    """A few unmeasured messages, so the first level does not pay first-call costs."""
    url = f"{server.base}/api/v1/messages"
    rng = random.Random("warm-up")
    tally = Tally()
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            sender = f"bench-{token}-warmup-c{i // 2}"
            await send(session, url, sender, rng.choice(texts), f"{sender}-m{i}", tally)
    if tally.errors:
        raise RuntimeError(f"warm-up failed: {dict(tally.errors)}\n{server.log_tail()}")


# -- reporting -------------------------------------------------------------------------------


def mb(value: int) -> float:
    return value / (1024 * 1024)


def describe(result: LevelResult) -> str:
    t = result.tally
    errors = sum(t.errors.values())
    error_kinds = f" ({', '.join(f'{k} x{v}' for k, v in t.errors.items())})" if errors else ""
    per_message = result.server_cpu_s / t.messages * 1000 if t.messages else float("nan")
    peak_kind = "during this level" if result.peak_is_per_level else "since start (VmHWM)"
    stage_parts = []
    for stage in STAGES:
        total, count = result.stages.get(stage, (0.0, 0.0))
        mean = f"{total / count * 1000:.1f} ms" if count else "-"
        stage_parts.append(f"{stage} {mean} (n={count:.0f})")
    routes = ", ".join(f"{route} {n}" for route, n in t.routes.most_common())
    return "\n".join(
        [
            f"[{result.label}] {result.level} concurrent conversations",
            f"  messages {t.messages} in {result.seconds:.1f} s = {result.throughput:.1f} msg/s"
            f"  ({t.conversations} conversations started)",
            f"  latency p50 {result.percentile(50):.0f} ms  p90 {result.percentile(90):.0f} ms"
            f"  p99 {result.percentile(99):.0f} ms  (client-side, 200 answers)",
            f"  errors {errors}{error_kinds}; server-side error replies "
            f"{result.server_errors:.0f}; silent replies {t.silent} (escalated conversations)",
            f"  replies by route: {routes or '-'}",
            f"  server CPU {result.server_cpu_s:.1f} s = {per_message:.1f} ms/message;"
            f"  client CPU {result.client_cpu_s:.1f} s;  load average {result.load_average:.2f}",
            f"  server RSS peak {mb(result.peak_rss):.0f} MB {peak_kind}; "
            f"max sampled {mb(result.sampled_rss):.0f} MB",
            f"  /metrics stage means: {'; '.join(stage_parts)}",
        ]
    )


def tables(results: Sequence[LevelResult], compare: bool) -> list[str]:
    lines = [
        "| mode | conversations | messages | s | msg/s | p50 ms | p90 ms | p99 ms | errors "
        "| silent | server CPU ms/msg | peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        t = r.tally
        cpu = r.server_cpu_s / t.messages * 1000 if t.messages else float("nan")
        lines.append(
            f"| {r.label} | {r.level} | {t.messages} | {r.seconds:.1f} | {r.throughput:.1f} "
            f"| {r.percentile(50):.0f} | {r.percentile(90):.0f} | {r.percentile(99):.0f} "
            f"| {sum(t.errors.values()) + r.server_errors:.0f} | {t.silent} | {cpu:.1f} "
            f"| {mb(r.peak_rss):.0f} |"
        )
    lines += [
        "",
        "Server stage means from /metrics (ms; supportbot_stage_seconds sum / count):",
        "",
        "| mode | conversations | " + " | ".join(STAGES) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in STAGES) + " |",
    ]
    for r in results:
        cells = []
        for stage in STAGES:
            total, count = r.stages.get(stage, (0.0, 0.0))
            cells.append(f"{total / count * 1000:.1f}" if count else "-")
        lines.append(f"| {r.label} | {r.level} | " + " | ".join(cells) + " |")
    if compare:
        by_key = {(r.mode, r.level): r for r in results if r.release in ("", "working tree")}
        lines += [
            "",
            "Micro-batching speed-up (throughput batched / unbatched):",
            "",
            "| conversations | batched msg/s | unbatched msg/s | speed-up |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for level in sorted({r.level for r in results}):
            on, off = by_key.get(("batched", level)), by_key.get(("unbatched", level))
            if on and off:
                ratio = on.throughput / off.throughput if off.throughput else float("nan")
                lines.append(
                    f"| {level} | {on.throughput:.1f} | {off.throughput:.1f} | {ratio:.2f}x |"
                )
    lines += baseline_ratios(results)
    return lines


def baseline_ratios(results: Sequence[LevelResult]) -> list[str]:
    """Working tree against --baseline per mode and level: msg/s, p50, p99, peak RSS."""
    base = {(r.mode, r.level): r for r in results if r.release.startswith("baseline")}
    if not base:
        return []
    name = next(r.release for r in results if r.release.startswith("baseline"))
    lines = [
        "",
        f"Working tree against the {name} (ratio = working tree / baseline; msg/s: higher "
        "is better, latency and RSS: lower is better):",
        "",
        "| mode | conversations | msg/s base | msg/s now | ratio | p50 ms base | p50 ms now "
        "| p99 ms base | p99 ms now | peak RSS MB base | peak RSS MB now |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for now in results:
        before = base.get((now.mode, now.level))
        if now.release != "working tree" or before is None:
            continue
        ratio = now.throughput / before.throughput if before.throughput else float("nan")
        lines.append(
            f"| {now.mode} | {now.level} | {before.throughput:.1f} | {now.throughput:.1f} "
            f"| **{ratio:.2f}x** | {before.percentile(50):.0f} | {now.percentile(50):.0f} "
            f"| {before.percentile(99):.0f} | {now.percentile(99):.0f} "
            f"| {mb(before.peak_rss):.0f} | {mb(now.peak_rss):.0f} |"
        )
    return lines


@contextlib.contextmanager
def baseline_worktree(ref: str, parent: Path) -> Iterator[tuple[Path, str]]:
    """`ref` checked out (detached) into a temporary git worktree; removed afterwards."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", f"{ref}^{{commit}}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        sys.exit(f"--baseline {ref}: not a revision of {ROOT} ({detail.strip()})")
    path = parent / f"baseline-{sha}"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(path), sha],
        check=True,
    )
    try:
        yield path, sha
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False
        )


# -- main ------------------------------------------------------------------------------------


def server_env(
    ns: argparse.Namespace, workdir: Path, mode: str, release: str, root: Path
) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if root != ROOT:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p
        )
    name = f"{release}-{mode}".replace(" ", "-").replace(":", "") if release else mode
    store = ns.store_url or f"sqlite+aiosqlite:///{workdir / f'bench-{name}.db'}"
    index = ns.baseline_index if root != ROOT and ns.baseline_index else ns.index
    models = ns.baseline_models if root != ROOT and ns.baseline_models else ns.models
    env.update(
        {
            "SUPPORTBOT_MODELS__DIR": str(models),
            "SUPPORTBOT_RETRIEVAL__INDEX_DIR": str(index),
            "SUPPORTBOT_STORE__URL": store,
            "SUPPORTBOT_MODELS__TRAIN_IF_MISSING": "false",
            "SUPPORTBOT_RETRIEVAL__BUILD_IF_MISSING": "false",
        }
    )
    if ns.quantize is not None:
        env["SUPPORTBOT_MODELS__QUANTIZE"] = "true" if ns.quantize else "false"
    if mode == "unbatched":
        env["SUPPORTBOT_NLU__MAX_BATCH"] = "1"
        env["SUPPORTBOT_NLU__MAX_WAIT_MS"] = "0"
    return env


async def run_mode(
    ns: argparse.Namespace,
    mode: str,
    workdir: Path,
    texts: Sequence[str],
    lengths: Sequence[int],
    token: str,
    release: str = "",
    root: Path = ROOT,
) -> list[LevelResult]:
    env = server_env(ns, workdir, mode, release, root)
    label = f"{release}: {mode}" if release else mode
    server = Server(env, workdir, free_port(), label, root)
    results = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as admin:
        startup_s = await server.start(admin, ns.start_timeout)
        try:
            status = proc_status(server.pid)
            ready_rss, start_peak = status.get("VmRSS", 0), status.get("VmHWM", 0)
            async with admin.get(f"{server.base}/readyz") as response:
                versions = (await response.json()).get("models", {})
            print(
                f"[{label}] server pid {server.pid} on {server.base} ready in {startup_s:.1f} s, "
                f"models {versions}, RSS {mb(ready_rss):.0f} MB (peak while starting "
                f"{mb(start_peak):.0f} MB), "
                f"store {env['SUPPORTBOT_STORE__URL']}",
                flush=True,
            )
            await warm_up(server, texts, ns.warmup, token)
            for level in ns.levels:
                result = await run_level(
                    server, mode, level, ns.seconds, texts, lengths, ns.seed, token, admin
                )
                result.release = release
                results.append(result)
                print(describe(result), flush=True)
        finally:
            status = await server.stop()
            if status not in (0, None, -signal.SIGTERM):
                print(
                    f"[{label}] the server exited with status {status} on SIGTERM; last lines "
                    f"of {server.log_path}:\n{server.log_tail()}",
                    flush=True,
                )
    return results


def parse_levels(value: str) -> list[int]:
    try:
        levels = [int(part) for part in value.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,10,100, got {value!r}") from exc
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"levels must be positive integers, got {value!r}")
    return levels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="models root")
    parser.add_argument("--index", type=Path, help="answer index (default <models>/answers)")
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="sample data folder")
    parser.add_argument(
        "--levels", type=parse_levels, default=[1, 10, 100], help="concurrent conversations"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each level")
    parser.add_argument(
        "--messages-per-conversation",
        type=int,
        help="customer messages per simulated conversation (default: drawn from the customer "
        "turns of the sample conversations)",
    )
    parser.add_argument(
        "--compare-batching",
        action="store_true",
        help="also run every level with micro-batching off, on a fresh server and store",
    )
    parser.add_argument(
        "--quantize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="set SUPPORTBOT_MODELS__QUANTIZE (default: the server's default)",
    )
    parser.add_argument(
        "--store-url", help="e.g. postgresql+asyncpg://user@host/db (default: a fresh SQLite file)"
    )
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured messages per server")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="seconds for /readyz")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also serve this git revision (a temporary worktree) first, on the same models, "
        "data and seed, and print the ratios working tree / baseline",
    )
    parser.add_argument(
        "--baseline-index",
        type=Path,
        metavar="DIR",
        help="the answer index the baseline serves (default: --index), for a revision that "
        "cannot read this one's index format: build it with that revision's `index build`",
    )
    parser.add_argument(
        "--baseline-models",
        type=Path,
        metavar="DIR",
        help="the models root the baseline serves (default: --models): each release on the "
        "models its own `train` makes, e.g. intent and sentiment trained apart for a release "
        "before `train intent+sentiment`",
    )
    ns = parser.parse_args()
    ns.models = ns.models.resolve()
    ns.index = (ns.index or ns.models / "answers").resolve()
    for flag in ("baseline_index", "baseline_models"):
        if getattr(ns, flag) is not None:
            if not ns.baseline:
                sys.exit(f"--{flag.replace('_', '-')} needs --baseline REF")
            setattr(ns, flag, getattr(ns, flag).resolve())
    for root in (ns.models, ns.baseline_models):
        if root is not None and not (root / "registry.json").is_file():
            sys.exit(f"{root} holds no registry.json; pass a trained models root with --models")
    if not (ns.index / "index.json").is_file():
        sys.exit(f"{ns.index} holds no answer index (index.json); pass one with --index")
    if ns.messages_per_conversation is not None and ns.messages_per_conversation < 1:
        sys.exit("--messages-per-conversation must be at least 1")

    texts = read_customer_texts(ns.data)
    lengths = (
        [ns.messages_per_conversation]
        if ns.messages_per_conversation
        else conversation_lengths(ns.data)
    )
    token = uuid.uuid4().hex[:8]  # unique sender ids when a PostgreSQL store is reused
    modes = ["batched", "unbatched"] if ns.compare_batching else ["batched"]
    inherited = sorted(k for k in os.environ if k.startswith("SUPPORTBOT_"))
    print("runtime benchmark: supportbot serve under concurrent REST conversations")
    print(
        f"models {ns.models}"
        + (f" (baseline: {ns.baseline_models})" if ns.baseline_models else "")
        + f", index {ns.index}, quantize "
        f"{'server default' if ns.quantize is None else ns.quantize}, CPUs {os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.2f}, seed {ns.seed}"
    )
    print(
        f"{len(texts)} distinct customer texts from {ns.data}; conversation lengths "
        f"{dict(sorted(Counter(lengths).items()))}; levels {ns.levels} x {ns.seconds:g} s; "
        f"modes {', '.join(modes)}"
    )
    if inherited:
        print(f"inherited settings from the environment: {', '.join(inherited)}")
    print(flush=True)

    results: list[LevelResult] = []
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="supportbot-bench-")))
        releases: list[tuple[str, Path]] = [("", ROOT)]
        if ns.baseline:
            worktree, sha = stack.enter_context(baseline_worktree(ns.baseline, tmp))
            print(f"baseline: {ns.baseline} = {sha}, checked out in {worktree}", flush=True)
            releases = [(f"baseline {sha}", worktree), ("working tree", ROOT)]
        for release, root in releases:
            for mode in modes:
                try:
                    results += asyncio.run(
                        run_mode(ns, mode, tmp, texts, lengths, token, release, root)
                    )
                except RuntimeError as exc:
                    print(f"[{release or mode}] {exc}", file=sys.stderr)
                    return 1
                print(flush=True)
    print("\n".join(tables(results, ns.compare_batching)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
