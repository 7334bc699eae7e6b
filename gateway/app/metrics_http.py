"""The ``[metrics] listen`` endpoint: the twisted.web site serving ``/metrics``.

Apart from :mod:`gateway.app.metrics` (the counters, kept always) because twisted.web's
server, resource and page modules cost ~80 modules of start-up that a gateway without
the endpoint (the default) never uses: the service imports this module only when
``[metrics] enabled`` is on (issue 19, start-up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client.exposition import make_wsgi_app
from twisted.web import pages, resource, server
from twisted.web.wsgi import WSGIResource

if TYPE_CHECKING:
    from gateway.app.metrics import GatewayMetrics


def metrics_resource(metrics: GatewayMetrics, reactor: Any) -> resource.Resource:
    """prometheus-client's Twisted resource for this gateway's registry.

    ``prometheus_client.twisted.MetricsResource(registry)`` is exactly
    ``WSGIResource(reactor, reactor.getThreadPool(), make_wsgi_app(registry))`` with the
    *global* reactor, imported when the module is (which would install the default
    reactor as a side effect of importing this one). The same resource is built here with
    the reactor popgate was given. The WSGI app answers GET (and OPTIONS); its scrape runs
    in the reactor's thread pool, never blocking the reactor on a slow ``stat``."""
    return WSGIResource(reactor, reactor.getThreadPool(), make_wsgi_app(metrics.registry))


class IndexResource(resource.Resource):
    """``/`` points at ``/metrics``; anything else is 404."""

    def __init__(self, metrics_child: resource.Resource) -> None:
        super().__init__()
        self.putChild(b"metrics", metrics_child)

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        if path == b"":
            return self
        return pages.notFound()

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"popgate metrics: /metrics\n"


class QuietSite(server.Site):
    """A Site that writes no access log (each scrape would be a log line every 15 s)."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def metrics_site(metrics: GatewayMetrics, reactor: Any) -> server.Site:
    """The twisted.web site of ``[metrics] listen``: ``/`` and ``/metrics``."""
    return QuietSite(IndexResource(metrics_resource(metrics, reactor)))
