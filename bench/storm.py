"""The reconnect storm (issue 19): N devices LOGIN, SELECT and IDLE; the gateway restarts;
every device reconnects at once; how long until all are IDLE again. Also the figures of
N IDLE connections: the gateway's RSS in all and the delay of a push (``* n EXISTS``).

Two shapes, because after a restart the cost is one scrypt check per distinct (user,
password), whatever the cache does (gateway/security/authcache.py):

* household: few users with many devices each (``sizes.storm_household_users`` users
  share ``sizes.storm_devices`` devices), each user's devices from one address (their
  home's NAT);
* provider: every device its own user from its own address (``sizes.storm_provider_devices``;
  each user needs a real scrypt hash, made in a process pool before the run).

Each shape runs three waves: the first connections (at most :data:`FIRST_WAVE_CONCURRENCY`
at a time, as devices come online over time), a restart (SIGTERM, then a new process;
every device reconnects the moment it listens) and a network blip (the gateway stays up,
every device drops and reconnects at once: the cache is warm). Devices come from
addresses in 127.0.0.0/8 (each a different source to the gateway), all on loopback.

The clients are asyncio protocols in this process (one loop; a line-splitting state
machine per device, no streams), so they cost little of the two CPUs the gateway needs.
The login budgets are the defaults (30 failures per address, 100 per user): a household's
500 devices behind one address reconnecting together wait for their turn (30 checks under
way per address) and are never refused (gateway/security/penalty.py). Only the cap of
connections per user and address is lifted (:data:`STORM_SECURITY`).
``ListenOverflows`` (``/proc/net/netstat``, system-wide: other work on the machine counts
too) is read before and after each wave.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.load import cpu_seconds
from bench.popgate import GatewayServer
from bench.report import Target, percentile
from gateway.security.passwords import hash_password

if TYPE_CHECKING:
    from bench.scenarios import Bench

STORM_SECURITY = {"max_connections_per_user_ip": 0}
"""[security] for the storm: login budgets and the per-address cap (1,000) at their
defaults; the cap per user and address (50) lifted, because the household shape packs
10,000 devices into 20 users (500 each, behind one address) so that a restart costs 20
scrypt checks; real users have a few devices each, well under the cap."""

FIRST_WAVE_CONCURRENCY = 50
"""Devices connecting at once in the first wave (not measured as a storm)."""

WAVE_TIMEOUT = 900.0
"""Seconds a device may take to get back to IDLE before it counts as failed."""

GREETING_TIMEOUT = 30.0
"""A device that gets no greeting this long after connecting hangs up and connects again,
as phones do (the issue's "connected socket that never greeted" costs this much)."""

PUSH_USERS = 10
"""Users who get one APPEND each for the push-delay figure (their devices all IDLE)."""

PUSH_WAIT = 10.0
"""Seconds to wait for every device of a user to see its push."""

PROBES_PER_USER = 20
"""IDLE connections of :mod:`bench.pushprobe` per push user (besides the herd's 500)."""

TARGET_SECONDS = 30.0
"""Issue 19: all devices IDLE again within 30 s of the restart."""


def raise_fd_limit() -> int:
    """Raise this process's soft descriptor limit to its hard limit (children inherit
    it: the gateway needs one per device too); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def listen_overflows() -> int:
    """TcpExt ListenOverflows: handshakes dropped because an accept queue was full."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return 0


def source_address(user: int) -> str:
    """A distinct loopback address per user index (all of 127.0.0.0/8 is local)."""
    return f"127.{1 + user // 62_500}.{(user // 250) % 250 + 1}.{user % 250 + 1}"


def hash_all(passwords: dict[str, str]) -> dict[str, str]:
    """Real scrypt hashes, made on every CPU (as many as there are users to hash)."""
    names = list(passwords)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        hashes = list(pool.map(hash_password, [passwords[n] for n in names], chunksize=16))
    return dict(zip(names, hashes, strict=True))


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Device(asyncio.Protocol):
    """One connection of one device: greeting → LOGIN → SELECT INBOX → IDLE; then counts
    the ``EXISTS`` lines it is pushed."""

    def __init__(self, user: str, password: str, loop: asyncio.AbstractEventLoop) -> None:
        self.login = b'a LOGIN "%s" "%s"\r\n' % (user.encode(), password.encode())
        self.state = "greeting"
        self.buffer = b""
        self.idle: asyncio.Future[float] = loop.create_future()
        self.greeted: asyncio.Future[None] = loop.create_future()
        for future in (self.idle, self.greeted):  # a hung-up device's are never awaited
            future.add_done_callback(_retrieved)
        self.pushes: list[float] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n")) >= 0:
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            self._line(line)

    def _fail(self, line: bytes) -> None:
        if not self.idle.done():
            self.idle.set_exception(ConnectionError(f"{self.state}: {line[:100]!r}"))
        self.state = "failed"
        if self.transport is not None:
            self.transport.close()

    def _line(self, line: bytes) -> None:
        state, send = self.state, self.transport.write  # type: ignore[union-attr]
        if state == "greeting":
            if not line.startswith(b"* OK"):
                return self._fail(line)
            send(self.login)
            self.state = "login"
            self.greeted.set_result(None)
        elif state == "login" and line.startswith(b"a "):
            if not line.startswith(b"a OK"):
                return self._fail(line)
            send(b"b SELECT INBOX\r\n")
            self.state = "select"
        elif state == "select" and line.startswith(b"b "):
            if not line.startswith(b"b OK"):
                return self._fail(line)
            send(b"c IDLE\r\n")
            self.state = "idling"
        elif state == "idling":
            if line.startswith(b"+"):
                self.state = "idle"
                self.idle.set_result(time.perf_counter())
            elif line.startswith(b"c "):
                self._fail(line)
        elif state == "idle" and line.endswith(b" EXISTS"):
            self.pushes.append(time.perf_counter())
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.greeted.done():
            self.greeted.set_exception(ConnectionError(f"closed before the greeting: {exc}"))
        if not self.idle.done():
            self.idle.set_exception(ConnectionError(f"closed in {self.state}: {exc}"))
        self.state = "closed"


@dataclass
class Wave:
    """One wave's outcome: seconds from ``started`` until each device was IDLE."""

    seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    overflows: int = 0
    silent: int = 0
    """Connections that got no greeting within :data:`GREETING_TIMEOUT` (then retried)."""

    @property
    def last(self) -> float:
        return max(self.seconds) if self.seconds else float("nan")


class Herd:
    """The devices: ``plan[i]`` is (user, password, user index) of device i."""

    def __init__(self, plan: Sequence[tuple[str, str, int]], port: int) -> None:
        self.plan = plan
        self.port = port
        self.devices: list[Device | None] = [None] * len(plan)
        self.loop = asyncio.new_event_loop()

    def close_all(self) -> None:
        for device in self.devices:
            if device is not None and device.transport is not None:
                device.transport.close()
        self.loop.run_until_complete(asyncio.sleep(0.5))  # let the closes go out

    def wave(self, started: float, concurrency: int | None = None) -> Wave:
        """Connect every device (at most ``concurrency`` at once; None: all at once)."""
        return self.loop.run_until_complete(self._wave(started, concurrency))

    async def _wave(self, started: float, concurrency: int | None) -> Wave:
        wave = Wave()
        before = listen_overflows()
        gate = asyncio.Semaphore(concurrency or len(self.plan))

        async def one(index: int) -> None:
            user, password, number = self.plan[index]
            async with gate:
                deadline = time.perf_counter() + WAVE_TIMEOUT
                while True:
                    device = Device(user, password, self.loop)
                    self.devices[index] = device
                    try:
                        await self._connect(device, number, deadline - time.perf_counter())
                        wave.seconds.append(device.idle.result() - started)
                        return
                    except TimeoutError:
                        if device.state != "greeting" or time.perf_counter() >= deadline:
                            wave.errors.append(f"{user}: timed out in {device.state}")
                            return
                        wave.silent += 1  # never greeted: hang up, connect again
                        if device.transport is not None:
                            device.transport.abort()
                    except OSError as error:
                        wave.errors.append(f"{user}: {type(error).__name__}: {error}")
                        return

        await asyncio.gather(*(one(i) for i in range(len(self.plan))))
        wave.overflows = listen_overflows() - before
        return wave

    async def _connect(self, device: Device, number: int, timeout: float) -> None:
        """Connect, wait for the greeting (:data:`GREETING_TIMEOUT`, as a phone would),
        then for IDLE; TimeoutError when either takes too long."""
        try:
            async with asyncio.timeout(min(timeout, GREETING_TIMEOUT)):
                await self.loop.create_connection(
                    lambda: device, "127.0.0.1", self.port, local_addr=(source_address(number), 0)
                )
                await device.greeted
        except TimeoutError:
            if device.state == "greeting":
                raise
            # greeted as the timeout fired (a busy loop runs both at once): carry on
        await asyncio.wait_for(device.idle, max(0.0, timeout))

    def push_delays(self, passwords: dict[str, str], server_pid: int | None = None) -> Pushes:
        """APPEND one message to each of :data:`PUSH_USERS` users, one after another,
        from :mod:`bench.pushprobe` (a process of its own, with :data:`PROBES_PER_USER`
        IDLE probes per user besides the herd's devices); the delays as the probes and
        as the herd's devices saw them, from the same start (the APPEND's send); with
        ``server_pid``, the gateway's CPU time over each push (APPEND and fan-out)."""
        return self.loop.run_until_complete(self._push_delays(passwords, server_pid))

    async def _push_delays(self, passwords: dict[str, str], server_pid: int | None) -> Pushes:
        pushes = Pushes()
        numbers = {user: number for user, _pw, number in self.plan}
        users = list(numbers)[:PUSH_USERS]
        spec = {
            "users": [[u, passwords[u], source_address(numbers[u])] for u in users],
            "per_user": PROBES_PER_USER,
        }
        probe = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.pushprobe",
            str(self.port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert probe.stdin is not None and probe.stdout is not None
        lags: list[float] = []
        watching = True

        async def loop_lag() -> None:
            """How late this loop runs a 1 ms timer: the herd's own reading latency."""
            while watching:
                due = time.perf_counter() + 0.001
                await asyncio.sleep(0.001)
                lags.append(time.perf_counter() - due)

        try:
            probe.stdin.write(json.dumps(spec).encode() + b"\n")
            ready = await asyncio.wait_for(probe.stdout.readline(), WAVE_TIMEOUT)
            if not ready.startswith(b'{"ready": true'):
                raise RuntimeError(f"push probe: {ready!r}")
            pushes.logins = json.loads(ready)["login"]
            lagging = self.loop.create_task(loop_lag())
            for user in users:
                devices = [
                    d
                    for d, (owner, _pw, _n) in zip(self.devices, self.plan, strict=True)
                    if owner == user and d is not None and d.state == "idle"
                ]
                seen = [len(d.pushes) for d in devices]
                await asyncio.sleep(0.2)  # the previous push is over everywhere
                lags.clear()
                cpu = cpu_seconds([server_pid]) if server_pid is not None else 0.0
                probe.stdin.write(f"push {user}\n".encode())
                result = json.loads(await probe.stdout.readline())
                deadline = time.perf_counter() + PUSH_WAIT
                while time.perf_counter() < deadline and any(
                    len(d.pushes) == n for d, n in zip(devices, seen, strict=True)
                ):
                    await asyncio.sleep(0.005)
                if server_pid is not None:
                    pushes.server_cpu.append(cpu_seconds([server_pid]) - cpu)
                sent = result["sent"]
                pushes.probe += [t - sent for t in result["seen"] if t == t]  # NaN: missed
                pushes.missed += sum(1 for t in result["seen"] if t != t)
                pushes.appended.append(result["ok"] - sent)
                pushes.herd += [
                    d.pushes[n] - sent
                    for d, n in zip(devices, seen, strict=True)
                    if len(d.pushes) > n
                ]
                pushes.herd_lag.append(max(lags, default=0.0))
            watching = False
            await lagging
        finally:
            probe.stdin.close()
            try:
                await asyncio.wait_for(probe.wait(), 10)
            except TimeoutError:
                probe.kill()
                await probe.wait()
        return pushes


@dataclass
class Pushes:
    """Push delays in seconds from the APPEND's send (:meth:`Herd.push_delays`)."""

    probe: list[float] = field(default_factory=list)
    """As the probe process's IDLE connections saw them (stamped at socket readiness)."""
    herd: list[float] = field(default_factory=list)
    """As the herd's devices saw them (stamped in this process's loop)."""
    appended: list[float] = field(default_factory=list)
    """Until the APPEND's tagged OK, one per push."""
    herd_lag: list[float] = field(default_factory=list)
    """The herd loop's worst lateness of a 1 ms timer during each push."""
    server_cpu: list[float] = field(default_factory=list)
    """The gateway's CPU seconds (``/proc`` utime + stime, 10 ms ticks) over each push:
    the APPEND, its commit and the fan-out to every IDLE connection of the user."""
    missed: int = 0
    logins: list[float] = field(default_factory=list)
    """Seconds the probe's APPEND connections took to connect and LOGIN (the bench's
    clock used to start before that)."""


def _rss_in_all(server: GatewayServer) -> float:
    """VmRSS of the gateway and its children (the key holder), in MiB."""
    total = 0
    pids = [server.pid]
    for task in Path(f"/proc/{server.pid}/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total / 2**20


def _ms(samples: Sequence[float], fraction: float) -> float:
    """A percentile of seconds, in milliseconds (NaN for none)."""
    found = percentile(samples, fraction)
    return float("nan") if found is None else round(found * 1000, 1)


def _mean_ms(samples: Sequence[float]) -> float:
    """The mean of seconds, in milliseconds (NaN for none)."""
    return round(sum(samples) / len(samples) * 1000, 1) if samples else float("nan")


def _shape(
    bench: Bench, name: str, devices: int, users: int, *, waves: bool = True
) -> dict[str, object]:
    """Run the three waves for one shape (``waves`` false: the first wave and the pushes
    only); the figures as a dict for the rows."""
    passwords = {f"{name[0]}{u:05d}": f"storm-pw-{u}" for u in range(users)}
    names = list(passwords)
    plan = [(names[i % users], passwords[names[i % users]], i % users) for i in range(devices)]
    started = time.perf_counter()
    hashes = hash_all(passwords)
    hashing = time.perf_counter() - started
    bench.log(f"storm {name}: {users} scrypt hashes in {hashing:.0f}s")
    state = bench.root / f"storm-{name}-state"
    state.mkdir(mode=0o700)
    server = GatewayServer(
        bench.root / f"storm-{name}",
        passwords,
        state_dir=state,
        hashes=hashes,
        security=STORM_SECURITY,
    )
    server.start()
    herd = Herd(plan, server.port)
    figures: dict[str, object] = {
        "devices": devices,
        "users": users,
        "scrypt_rate": users / max(hashing, 1e-9),
    }
    try:
        first = herd.wave(time.perf_counter(), FIRST_WAVE_CONCURRENCY)
        bench.log(f"storm {name}: first wave {first.last:.1f}s, {len(first.errors)} errors")
        time.sleep(1.0)
        figures["rss_mib"] = _rss_in_all(server)
        pushes = herd.push_delays(passwords, server.pid)
        figures["push"] = pushes
        bench.log(
            f"storm {name}: push p50/p99: probes {_ms(pushes.probe, 0.5)}/"
            f"{_ms(pushes.probe, 0.99)} ms ({pushes.missed} missed), herd "
            f"{_ms(pushes.herd, 0.5)}/{_ms(pushes.herd, 0.99)} ms, APPEND OK "
            f"{_ms(pushes.appended, 0.5)} ms, herd loop lag max {_ms(pushes.herd_lag, 1.0)} ms, "
            f"connect+LOGIN p50/max {_ms(pushes.logins, 0.5)}/{_ms(pushes.logins, 1.0)} ms, "
            f"gateway CPU per push {_mean_ms(pushes.server_cpu)} ms"
        )
        herd.close_all()
        if not waves:
            return figures
        server.stop()
        restart = time.perf_counter()
        server.start()
        listening = time.perf_counter()
        wave = herd.wave(restart)
        figures["restart"] = wave
        figures["restart_listen_s"] = listening - restart
        bench.log(
            f"storm {name}: restart: listening after {listening - restart:.1f}s, all IDLE after "
            f"{wave.last:.1f}s, {len(wave.errors)} errors, {wave.silent} never greeted, "
            f"ListenOverflows +{wave.overflows}"
        )
        herd.close_all()
        blip = herd.wave(time.perf_counter())
        figures["blip"] = blip
        bench.log(
            f"storm {name}: blip: all IDLE after {blip.last:.1f}s, {len(blip.errors)} errors, "
            f"{blip.silent} never greeted, ListenOverflows +{blip.overflows}"
        )
        herd.close_all()
    finally:
        herd.loop.close()
        server.stop()
    return figures


def storm(bench: Bench) -> None:
    """Both shapes; rows: time to all IDLE after a restart and after a blip, RSS and
    push delay with every device IDLE (household shape: the most devices)."""
    limit = raise_fd_limit()
    sizes = bench.sizes
    need = sizes.storm_devices + 100
    if limit < 2 * need:
        bench.log(f"storm: descriptor limit {limit} < {2 * need}: some devices will fail")
    for name, devices, users in (
        ("household", sizes.storm_devices, sizes.storm_household_users),
        ("provider", sizes.storm_provider_devices, sizes.storm_provider_devices),
    ):
        figures = _shape(bench, name, devices, users)
        restart, blip = figures["restart"], figures["blip"]
        assert isinstance(restart, Wave) and isinstance(blip, Wave)
        shape = f"{devices} devices, {users} users"
        bench.row(
            f"reconnect storm ({name}: {shape}): all IDLE after a restart",
            "s",
            "",
            [restart.last],
            target=Target(TARGET_SECONDS, at_least=False, on_ratio=False),
            note=f"from SIGTERM's successor starting; listening after "
            f"{figures['restart_listen_s']:.1f}s; errors {len(restart.errors)}"
            f"{' e.g. ' + restart.errors[0] if restart.errors else ''}; never greeted (retried after "
            f"{GREETING_TIMEOUT:g}s) {restart.silent}; ListenOverflows "
            f"+{restart.overflows}; {users / max(restart.last, 1e-9):.1f} distinct users/s; the"
            f" machine hashed {figures['scrypt_rate']:.1f} scrypt/s on all CPUs during setup",
        )
        bench.row(
            f"reconnect storm ({name}: {shape}): all IDLE after a network blip",
            "s",
            "",
            [blip.last],
            target=Target(TARGET_SECONDS, at_least=False, on_ratio=False),
            note=f"gateway up, verifier cache warm; errors {len(blip.errors)}; never greeted "
            f"{blip.silent}; ListenOverflows +{blip.overflows}",
        )
        if name == "household":
            _idle_rows(bench, figures, devices, users)


def _idle_rows(bench: Bench, figures: dict[str, object], devices: int, users: int) -> None:
    """The rows of N IDLE connections: RSS in all and the push delay (household shape)."""
    bench.row(
        f"{devices} IDLE connections: RSS in all",
        "MiB",
        "",
        [float(figures["rss_mib"])],  # type: ignore[arg-type]
        target=Target(200.0, at_least=False, on_ratio=False),
        note="VmRSS of the gateway and its key holder, every device LOGIN, SELECT, IDLE",
    )
    pushes = figures["push"]
    assert isinstance(pushes, Pushes)
    bench.row(
        f"{devices} IDLE connections: push delay p99",
        "ms",
        "",
        [_ms(pushes.probe, 0.99)],
        target=Target(50.0, at_least=False, on_ratio=False),
        note=f"APPEND to {PUSH_USERS} users one after another from bench/pushprobe.py"
        f" (its own process), from the APPEND's send to each of its {PROBES_PER_USER}"
        f" IDLE probes per user becoming readable (with the user's {devices // users}"
        f" devices IDLE too); {len(pushes.probe)} pushes, {pushes.missed} missed; p50"
        f" {_ms(pushes.probe, 0.5)} ms; APPEND's OK p50 {_ms(pushes.appended, 0.5)} ms;"
        f" as the herd's devices saw it (one asyncio loop of {devices}) p50"
        f" {_ms(pushes.herd, 0.5)} / p99 {_ms(pushes.herd, 0.99)} ms, that loop"
        f" {_ms(pushes.herd_lag, 1.0)} ms late at worst during a push; a fresh"
        f" connection's connect+LOGIN (inside the clock before) p50"
        f" {_ms(pushes.logins, 0.5)} ms; the gateway's CPU per push (APPEND, commit,"
        f" fan-out to {devices // users + PROBES_PER_USER} IDLE) {_mean_ms(pushes.server_cpu)} ms"
        f" (mean of {len(pushes.server_cpu)}, 10 ms ticks)",
    )


def push(bench: Bench) -> None:
    """The storm's push step alone (``--only push``, a minute or two): the household
    shape's first wave, then the pushes, without the restart and blip waves or the
    provider shape; the same two rows as :func:`storm` (RSS in all, push delay)."""
    limit = raise_fd_limit()
    sizes = bench.sizes
    if limit < 2 * (sizes.storm_devices + 100):
        bench.log(f"push: descriptor limit {limit}: some devices will fail")
    devices, users = sizes.storm_devices, sizes.storm_household_users
    figures = _shape(bench, "household", devices, users, waves=False)
    _idle_rows(bench, figures, devices, users)
