"""twistd plugin: `twistd popgate --config FILE` runs the gateway."""

from twisted.application.service import ServiceMaker

popgate = ServiceMaker(
    "popgate",
    "gateway.app.service",
    "POP3-to-IMAP gateway: fetch from POP3 upstreams, serve IMAP4rev1.",
    "popgate",
)
