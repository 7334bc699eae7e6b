"""``run_steps``: how much of a command one store-thread batch may run, at its edges
(:data:`gateway.serving.steps.STEP_OUTPUT_BUDGET`)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from gateway.serving.steps import DONE, STEP_OUTPUT_BUDGET, ThreadedSteps, run_steps


class Action:
    """Anything that is not bytes: what a command yields to wait for the server."""


def command(chunks: list[bytes], action: Any = None) -> Generator[Any, Any, None]:
    yield from chunks
    if action is not None:
        got = yield action
        yield b"after " + got


def test_a_batch_stops_once_its_output_reaches_the_budget_exactly() -> None:
    run = command([b"a" * 4, b"b" * 6, b"c" * 3])
    chunks, action = run_steps(run, None, None, budget=10)
    assert chunks == [b"a" * 4, b"b" * 6] and action is None  # 10 bytes: call again
    chunks, action = run_steps(run, None, None, budget=10)
    assert chunks == [b"c" * 3] and action is DONE


def test_one_byte_under_the_budget_runs_on_to_the_end() -> None:
    run = command([b"a" * 4, b"b" * 5])
    assert run_steps(run, None, None, budget=10) == ([b"a" * 4, b"b" * 5], DONE)


def test_an_action_ends_the_batch_and_its_answer_resumes_the_command() -> None:
    wait = Action()
    run = command([b"x"], wait)
    assert run_steps(run, None, None) == ([b"x"], wait)
    assert run_steps(run, None, b"reply") == ([b"after reply"], DONE)


def test_a_thrown_error_goes_into_the_command() -> None:
    def catching() -> Generator[Any, Any, None]:
        try:
            yield Action()
        except ValueError as e:
            yield str(e).encode()

    run = catching()
    chunks, action = run_steps(run, None, None)
    assert chunks == [] and isinstance(action, Action)
    assert run_steps(run, ValueError("refused"), None) == ([b"refused"], DONE)


def test_the_default_budget_bounds_a_large_response() -> None:
    piece = b"z" * 4096
    run = command([piece] * (2 * STEP_OUTPUT_BUDGET // len(piece)))
    chunks, action = run_steps(run, None, None)
    assert sum(map(len, chunks)) == STEP_OUTPUT_BUDGET and action is None


class Protocol(ThreadedSteps):
    """Records, for each write, whether the writer would send it at once (as IMAP's
    direct socket writes do outside the engine), and each engine round."""

    def __init__(self, busy: bool) -> None:
        self._busy = busy
        self._closing = False
        self._current = self._stepping = None
        self.written: list[tuple[bytes, bool]] = []
        self.rounds: list[bool] = []

    def _write(self, data: bytes) -> None:
        self.written.append((data, not self._busy))

    def _command_done(self) -> None:
        self._current = None

    def _run(self) -> None:
        self.rounds.append(self._busy)


def test_a_batchs_chunks_are_one_burst_sent_at_the_engines_end() -> None:
    """A store thread's batch hands its chunks back outside the engine: they are written
    as one burst (one ``sendmsg`` where each was one: bench/README.md, "PostgreSQL mix
    tail, session 6"), the engine's round after them sends it, and an inline batch,
    already inside the engine, leaves the engine's state as it was."""
    for inside in (False, True):
        protocol = Protocol(busy=inside)
        run = command([])
        token = protocol._stepping = object()
        protocol._current = run
        protocol._steps_done(([b"* 1 FETCH\r\n", b"a OK\r\n"], DONE), token, run)
        assert protocol.written == [(b"* 1 FETCH\r\n", False), (b"a OK\r\n", False)]
        assert protocol.rounds == [inside] and protocol._busy is inside
