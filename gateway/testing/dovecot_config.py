"""The configuration of a private Dovecot test instance: the dovecot.conf it runs with.

Settings are named as ``doveconf -d`` prints them for Dovecot 2.3.19; the facts behind the
less obvious ones are in /work/shared/DOVECOT-NOTES.md and commented in the text.
"""

from __future__ import annotations

import grp
import pwd
from typing import Any

from gateway.testing.ports import LOOPBACK

CONNECTION_LIMIT = 1000
"""mail_max_userip_connections: the default of 10 is too low for concurrent tests/benchmarks."""


def dovecot_conf(server: Any, account: pwd.struct_passwd, extra_config: str = "") -> str:
    """The dovecot.conf text for ``server`` (a :class:`gateway.testing.dovecot.Dovecot`:
    its directories, TLS files and ports), every process running as ``account``, with
    ``extra_config`` appended verbatim."""
    return f"""\
# Written by gateway/testing/dovecot_config.py for one test; not a system configuration.
instance_name = popgate-test-{server.dir.name}
base_dir = {server.base_dir}
state_dir = {server.state_dir}
log_path = {server.log_path}
protocols = pop3 imap
listen = {LOOPBACK}
verbose_proctitle = yes
# No stats service connections: a login process stopped early was seen blocking 5 s on the
# stats-writer handshake ("Timeout waiting for handshake response").
stats_writer_socket_path =

# Everything runs as one unprivileged account; Dovecot will not touch mail as uid 0.
default_login_user = {account.pw_name}
default_internal_user = {account.pw_name}
default_internal_group = {_group_name(account.pw_gid)}
first_valid_uid = {account.pw_uid}
last_valid_uid = {account.pw_uid}
first_valid_gid = {account.pw_gid}
last_valid_gid = {account.pw_gid}

ssl = yes
ssl_cert = <{server.cert_path}
ssl_key = <{server.key_path}

# Tests log in over plaintext too, fail logins on purpose, and connect many times.
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_verbose = yes
mail_max_userip_connections = {CONNECTION_LIMIT}

mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv

passdb {{
  driver = passwd-file
  args = scheme=PLAIN {server.users_path}
}}
userdb {{
  driver = static
  args = uid={account.pw_uid} gid={account.pw_gid} home={server.mail_dir}/%u
}}

# chroot needs root; the master runs unprivileged, so every chroot is cleared.
service anvil {{
  chroot =
  # Unreachable penalty socket = no auth penalty: Dovecot otherwise delays every login
  # from an IP after a failed one by 2 s and more (auth_failure_delay does not cover it).
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service ipc {{
  chroot =
}}
service old-stats {{
  chroot =
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    address = {LOOPBACK}
    port = {server.pop3_port}
  }}
  inet_listener pop3s {{
    address = {LOOPBACK}
    port = {server.pop3s_port}
    ssl = yes
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = {LOOPBACK}
    port = {server.imap_port}
  }}
  inet_listener imaps {{
    address = {LOOPBACK}
    port = {server.imaps_port}
    ssl = yes
  }}
}}
{extra_config}
"""


def _group_name(gid: int) -> str:
    return grp.getgrgid(gid).gr_name
