"""The ``sieve`` scenario: the 2,000-message POP3 import with a 20-rule Sieve script active
(issue 16) against the same import without one; target: at least 0.8 of the speed.

The script is what Roundcube's managesieve plugin writes for a typical filter set: twenty
rules testing From/To/Subject/List-Id with ``:contains``/``:is``/``:matches`` and
``address :domain``, filing into folders (some with ``:create``, flags, ``:copy``), so each
message is tested by most rules and about half end up outside INBOX.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.popgate import fetch_import
from bench.report import Target

RULES = """require ["fileinto", "mailbox", "imap4flags", "copy", "variables", "envelope"];
# rule: newsletters by List-Id
if header :contains "list-id" "midori-books" { fileinto :create "News/Books"; stop; }
if header :contains "list-id" "gartenfreunde" { fileinto :create "News/Garden"; stop; }
if header :contains "list-id" "python" { fileinto :create "Lists/Python"; stop; }
if exists "list-unsubscribe" { addflag "$Newsletter"; }
# rule: shops and orders
if address :domain :is "from" "outdoor.example.net" { fileinto :create "Shopping"; stop; }
if header :matches "subject" "Order confirmation #*" { fileinto :create "Shopping/Orders"; }
if header :contains "subject" ["invoice", "Rechnung", "facture"] { fileinto :create "Bills"; }
if address :localpart :is "from" ["noreply", "no-reply", "donotreply"] { addflag "$Auto"; }
# rule: family and friends
if address :domain :is "from" "example.net" { addflag "$Family"; }
if address :is "from" ["ned.martin@example.net", "rosa.martin@example.net"] {
  fileinto :copy :create "Family";
}
if header :contains "from" "Dubois" { fileinto :flags "\\\\Flagged" :create "Friends"; stop; }
# rule: work
if address :domain :is ["from", "cc"] ["work.example", "corp.example"] {
  fileinto :create "Work"; stop;
}
if header :contains "subject" ["[JIRA]", "[Confluence]", "standup"] { fileinto :create "Work/Tools"; stop; }
# rule: misc
if header :contains "subject" ["car", "garage"] { fileinto :create "House/Car"; }
if header :is "x-spam-flag" "YES" { fileinto :create "Junk"; stop; }
if size :over 1M { addflag "$Big"; }
if header :matches "subject" "Re: *" { set "thread" "${1}"; addflag "$Reply"; }
if envelope :domain :is "to" "example.org" { addflag "$Mine"; }
if not exists "date" { fileinto :create "Odd"; stop; }
if anyof (header :contains "subject" "urgent", header :is "importance" "high") {
  addflag "\\\\Flagged";
}
"""
"""Twenty rules (comments mark the groups); checked to compile by the scenario."""


def sieve_ingest(bench: Any, pop_user: tuple[str, str]) -> None:
    """Alternate imports with and without the script, ``repeats`` times each, from the
    ``pop_user`` (name, password) POP3 account the ingest scenario also imports."""
    from gateway.sieve import compile_script

    compile_script(RULES)
    script = bench.root / "rules.sieve"
    script.write_text(RULES)
    user, password = pop_user
    host, port, count = bench.dovecot.host, bench.dovecot.pop3_port, bench.sizes.ingest
    rates: dict[str, list[float]] = {"with": [], "without": []}
    for repeat in range(bench.sizes.repeats):
        for name, sieve in (("without", None), ("with", script)):
            work: Path = bench.work_dir(f"sieve-{name}-{repeat}")
            try:
                seconds, report = fetch_import(
                    work, host=host, port=port, user=user, password=password, sieve=sieve
                )
            finally:
                shutil.rmtree(work, ignore_errors=True)
            if report.get("fetched") != count or report.get("errors"):
                raise RuntimeError(f"sieve ingest {name}: {report} of {count}")
            rates[name].append(count / seconds)
        bench.log(
            f"sieve ingest repeat {repeat + 1}: without {rates['without'][-1]:.0f} msgs/s,"
            f" with {rates['with'][-1]:.0f} msgs/s"
        )
    bench.row(
        f"ingest {count} msgs with a 20-rule Sieve script vs none",
        "msgs/s",
        "no script",
        rates["with"],
        rates["without"],
        Target(0.8, at_least=True),
        note="same import, same process shape; the script files about half the messages"
        " into folders (:create, flags, :copy)",
    )
