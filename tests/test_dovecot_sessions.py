"""Reading POP3 sessions out of Dovecot's log (gateway/testing/dovecot_sessions.py): the
cluster acceptance test's proof that no two sessions overlapped is only as good as this."""

from __future__ import annotations

from gateway.testing.dovecot_sessions import overlaps, pop3_sessions

LOG = """\
2026-12-07 04:00:02.767015 master: Info: Dovecot v2.3.19.1 (9b53102964) starting up
2026-12-07 04:00:02.956120 pop3-login: Info: Disconnected: Connection closed (no auth attempts in 0 secs): user=<>, rip=127.0.0.1, lip=127.0.0.1, secured, session=<f2qn>
2026-12-07 04:00:04.059373 pop3-login: Info: Login: user=<alice>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1, mpid=31456, secured, session=<AAA1>
2026-12-07 04:00:04.100181 pop3(alice)<31456><AAA1>: Info: Disconnected: Logged out top=0/0, retr=0/0, del=0/1, size=18
2026-12-07 04:00:05.000001 pop3-login: Info: Login: user=<bob>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1, mpid=31457, secured, session=<BBB1>
2026-12-07 04:00:05.100000 pop3-login: Info: Login: user=<alice>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1, mpid=31458, secured, session=<AAA2>
2026-12-07 04:00:06.200000 pop3(alice)<31458><AAA2>: Info: Disconnected: Connection closed top=0/0, retr=3/100, del=0/5, size=500
2026-12-07 04:00:07.000000 pop3(bob)<31457><BBB1>: Info: Disconnected: Logged out
"""


def test_sessions_are_read_per_user_with_microsecond_times() -> None:
    sessions = pop3_sessions(LOG, "alice")
    assert [s.id for s in sessions] == ["AAA1", "AAA2"]
    assert sessions[0].began.microsecond == 59373 and sessions[0].ended is not None
    assert overlaps(sessions) == []


def test_an_overlap_is_found() -> None:
    late = (
        "2026-12-07 04:00:06.100000 pop3-login: Info: Login: user=<alice>, method=PLAIN,"
        " rip=127.0.0.1, lip=127.0.0.1, mpid=31459, secured, session=<AAA3>\n"
    )
    sessions = pop3_sessions(LOG + late, "alice")
    assert [(a.id, b.id) for a, b in overlaps(sessions)] == [("AAA2", "AAA3")]


def test_a_session_that_never_ended_overlaps_every_later_one() -> None:
    text = LOG.replace(
        "2026-12-07 04:00:04.100181 pop3(alice)<31456><AAA1>: Info: Disconnected: Logged out"
        " top=0/0, retr=0/0, del=0/1, size=18\n",
        "",
    )
    assert [(a.id, b.id) for a, b in overlaps(pop3_sessions(text, "alice"))] == [("AAA1", "AAA2")]
