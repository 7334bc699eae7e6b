"""bench/replay.py, the mbsync floor's zero-cost server: a recorded session is cut into one
answer per command (literals skipped whole), replayed byte for byte to the same commands
however they arrive, and refused at the first command it did not record."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from bench.replay import (
    Recorder,
    Replayer,
    Transcript,
    TranscriptError,
    answer_lengths,
    serve,
    split_commands,
)

GREETING = b"* OK ready\r\n"
# The literal holds what would end an answer or announce a literal if it were not skipped.
BODY = b"Subject: x\r\n\r\n1 OK fake\r\n* 2 FETCH {5}\r\n"
ANSWERS = [
    b"1 OK LOGIN done\r\n",
    b"* 1 FETCH (BODY[] {%d}\r\n%s UID 1)\r\n2 OK FETCH done\r\n" % (len(BODY), BODY),
    b"* BYE bye\r\n3 OK LOGOUT done\r\n",
]
COMMANDS = [b"1 LOGIN a b\r\n", b"2 UID FETCH 1 (BODY.PEEK[])\r\n", b"3 LOGOUT\r\n"]


def test_answers_are_cut_at_each_tagged_completion_with_literals_skipped() -> None:
    server = GREETING + b"".join(ANSWERS)
    greeting, lengths = answer_lengths(server, [b"1", b"2", b"3"])
    assert greeting == len(GREETING)
    assert lengths == [len(a) for a in ANSWERS]


def test_an_answer_out_of_order_or_trailing_octets_are_refused() -> None:
    server = GREETING + b"".join(ANSWERS)
    with pytest.raises(TranscriptError, match="completion b'2' where b'3' was due"):
        answer_lengths(server, [b"1", b"3", b"2"])
    with pytest.raises(TranscriptError, match="after the last answer"):
        answer_lengths(server + b"* 1 EXISTS\r\n", [b"1", b"2", b"3"])


def test_client_commands_with_a_literal_are_refused() -> None:
    assert split_commands(b"".join(COMMANDS)) == COMMANDS
    with pytest.raises(TranscriptError, match="literal"):
        split_commands(b"1 LOGIN {1}\r\na b\r\n")


def _transcript(tmp_path: Path) -> Transcript:
    (tmp_path / "server.bin").write_bytes(GREETING + b"".join(ANSWERS))
    exchanges = tuple((c, len(a)) for c, a in zip(COMMANDS, ANSWERS, strict=True))
    transcript = Transcript(tmp_path, len(GREETING), exchanges)
    transcript.save()
    return Transcript.load(tmp_path)


def test_replay_answers_whatever_way_the_commands_arrive(tmp_path: Path) -> None:
    transcript = _transcript(tmp_path)
    replayer = Replayer(transcript)
    offset = len(GREETING)
    stream = b"".join(COMMANDS)
    sent = 0
    for i in range(len(stream)):  # one octet at a time
        start, count = replayer.receive(stream[i : i + 1])
        assert start == offset + sent
        sent += count
    assert sent == sum(len(a) for a in ANSWERS)
    assert replayer.finished
    with pytest.raises(TranscriptError, match="not in the recording"):
        Replayer(transcript).receive(b"1 LOGIN a c\r\n")


def _fake_upstream(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(GREETING)
        reader = conn.makefile("rb")
        for answer in ANSWERS:
            reader.readline()
            conn.sendall(answer)


def _session(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"".join(COMMANDS))  # pipelined, as mbsync sends its FETCHes
        received = b""
        while chunk := client.recv(65536):
            received += chunk
    return received


def test_record_through_the_proxy_then_replay_the_same_octets(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        threading.Thread(target=_fake_upstream, args=(upstream,), daemon=True).start()
        with Recorder(upstream.getsockname(), tmp_path) as recorder:
            recorded = _session(recorder.port)
        transcript = recorder.transcript()
    assert recorded == GREETING + b"".join(ANSWERS)
    assert [c for c, _ in transcript.exchanges] == COMMANDS
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=serve, args=(transcript, listener), daemon=True).start()
    assert _session(listener.getsockname()[1]) == recorded
    assert _session(listener.getsockname()[1]) == recorded  # each connection from the start
