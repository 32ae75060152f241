"""ASGI app assembly: open the stores, migrate, build the writer, mount every route on one port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dashboard import alerts_api, pages, rollup
from dashboard import api as dashboard_api
from dashboard.alerts import Alerts
from dashboard.web_auth import Sessions, secret_key
from ingest import gateway_api, helicone_log, log_api, otlp, scores
from ingest.cache import ResponseCache
from ingest.controls import Gateway
from ingest.errors import HttpError
from ingest.limits import Limits
from ingest.metrics import Metrics
from ingest.proxy import PREFIXES, Proxy
from ingest.spool import Spool
from ingest.writer import Writer
from llmlens.settings import Settings
from pricing.prices import PriceBook
from storage import clickhouse, migrate, postgres
from storage.controlplane import ControlPlane, KeyCache

log = logging.getLogger("llmlens")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class Services:
    """Everything a request handler may need, built once per app; never a module-level singleton."""

    settings: Settings
    ch: clickhouse.ClickHouse  # reads
    ch_insert: clickhouse.ClickHouse  # the writer's own session, so inserts never queue behind dashboard reads
    pg: postgres.Postgres
    control: ControlPlane
    keys: KeyCache
    writer: Writer
    metrics: Metrics
    prices: PriceBook
    limits: Limits
    sessions: Sessions
    alerts: Alerts


def open_services(settings: Settings) -> Services:
    """Connect both stores (embedded ones start here), apply migrations, and build the writer."""
    metrics = Metrics()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ch = clickhouse.connect(settings.clickhouse_url, settings.chdb_dir, settings.clickhouse_database, metrics.observe_query)
    ch_insert = clickhouse.connect(settings.clickhouse_url, settings.chdb_dir, settings.clickhouse_database)
    pg = postgres.connect(settings.database_url, settings.data_dir)
    migrate.migrate_postgres(pg)
    migrate.migrate_clickhouse(ch)
    control = ControlPlane(pg)
    spool = Spool(settings.spool_dir, settings.spool_max_bytes)
    writer = Writer(
        ch_insert, spool, metrics=metrics, rejected_dir=settings.data_dir / "rejected",
        batch_rows=settings.batch_rows, max_wait_s=settings.batch_wait_s,
    )
    prices = PriceBook.load(settings.prices_file, auto_update=settings.prices_auto_update)
    return Services(
        settings=settings, ch=ch, ch_insert=ch_insert, pg=pg, control=control,
        keys=KeyCache(control, settings.key_cache_ttl_s), writer=writer, metrics=metrics, prices=prices,
        limits=Limits(pg), sessions=Sessions(secret_key(settings.secret_key, settings.data_dir)),
        alerts=Alerts(pg, ch, interval_s=settings.alert_interval_s, base_url=settings.base_url,
                      smtp_url=settings.smtp_url, mail_from=settings.alert_from),
    )


def setup_link(services: Services) -> str | None:
    """A one-time link that creates the first dashboard admin, while no user exists."""
    if services.control.user_count() > 0:
        return None
    return f"{services.settings.base_url}/setup/{services.sessions.new_setup_token()}"


def readiness(services: Services) -> list[str]:
    """Reasons llmlens is not ready; empty when it is."""
    problems = []
    try:
        services.ch.query("SELECT 1 AS ok", name="readyz")
    except Exception as exc:
        problems.append(f"ClickHouse is unreachable: {str(exc)[:200]}")
    try:
        services.pg.ping()
    except Exception as exc:
        problems.append(f"PostgreSQL is unreachable: {str(exc)[:200]}")
    if not problems:
        try:
            left = migrate.pending(services.ch, services.pg)
        except Exception as exc:
            problems.append(f"migrations cannot be checked: {str(exc)[:200]}")
        else:
            if left:
                problems.append(f"migrations not applied: {', '.join(left)}")
    spool = services.writer.spool
    if spool.bytes_used >= spool.max_bytes * 0.9:
        problems.append(f"the spool is nearly full ({spool.bytes_used} of {spool.max_bytes} bytes)")
    if services.writer.last_error:
        problems.append(f"ClickHouse inserts are failing: {services.writer.last_error[:200]}")
    return problems


async def error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HttpError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": "internal error; see the llmlens log"}, status_code=500)


class HttpMetrics:
    """Counts requests by route template and status (templates, not raw paths, keep label sets small)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def capture(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            self.metrics.http_requests.inc(route=getattr(route, "path", "unmatched"), status=str(status))


def create_app(settings: Settings, services: Services | None = None) -> ASGIApp:
    services = services or open_services(settings)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        problems = await asyncio.to_thread(readiness, services)
        if problems:
            return JSONResponse({"status": "unavailable", "reasons": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics_page(request: Request) -> Response:
        return PlainTextResponse(services.metrics.render(), media_type="text/plain; version=0.0.4")

    async def writer_health(request: Request) -> Response:
        spool = services.writer.spool
        return JSONResponse({
            "spool_bytes": spool.bytes_used, "spool_max_bytes": spool.max_bytes, "spool_segments": spool.segments,
            "last_error": services.writer.last_error or None,
        })

    gateway = Gateway(
        ResponseCache(services.pg, max_entry_bytes=settings.cache_max_entry_bytes, max_total_bytes=settings.cache_max_bytes),
        services.limits,
    )
    proxy = Proxy(
        keys=services.keys, writer=services.writer, prices=services.prices, metrics=services.metrics,
        openai_base_url=settings.openai_base_url, anthropic_base_url=settings.anthropic_base_url,
        allowed_hosts=settings.gateway_allowed_hosts, timeout_s=settings.upstream_timeout_s,
        max_body_bytes=settings.max_body_bytes, transport=settings.upstream_transport, gateway=gateway,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services.writer.start()
        await proxy.start()
        touch = asyncio.create_task(_every(30, services.keys.flush_last_used, "record API key last-used times"))
        evict = asyncio.create_task(_every(60, gateway.cache.evict, "evict expired cache entries"))
        alerting = asyncio.create_task(_every(settings.alert_interval_s, services.alerts.tick, "evaluate alert rules"))
        # On the writer's connection, so recomputing a day never holds up dashboard queries on chDB.
        roll = asyncio.create_task(_every(30, lambda: rollup.refresh(services.ch_insert, limit=8), "refresh the dashboard rollup"))
        try:
            yield
        finally:
            touch.cancel()
            evict.cancel()
            alerting.cancel()
            roll.cancel()
            await proxy.aclose()
            await services.writer.close()
            services.keys.flush_last_used()

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_page),
        Route("/api/v1/health/writer", writer_health),
        *log_api.routes(keys=services.keys, writer=services.writer, prices=services.prices, max_bytes=settings.max_log_bytes,
                        max_body_bytes=settings.max_body_bytes),
        *helicone_log.routes(keys=services.keys, writer=services.writer, prices=services.prices,
                             max_bytes=settings.max_log_bytes, max_body_bytes=settings.max_body_bytes),
        *otlp.routes(keys=services.keys, writer=services.writer, prices=services.prices,
                     max_bytes=settings.max_log_bytes, max_body_bytes=settings.max_body_bytes),
        *dashboard_api.routes(keys=services.keys, ch=services.ch),
        # an update for a request not yet in ClickHouse waits out the writer's batch window twice, plus a second
        *scores.routes(keys=services.keys, ch=services.ch, writer=services.writer, wait_s=2 * settings.batch_wait_s + 1.0),
        *gateway_api.routes(keys=services.keys, limits=services.limits),
        *alerts_api.routes(keys=services.keys, alerts=services.alerts),
        *pages.routes(ch=services.ch, control=services.control, keys=services.keys, sessions=services.sessions,
                      base_url=settings.base_url, prices=services.prices, limits=services.limits, alerts=services.alerts),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={Exception: error_response, HttpError: error_response})
    app.state.services = services
    return Dispatch(HttpMetrics(app, services.metrics), proxy, exact={r.path for r in routes})


class Dispatch:
    """Proxy prefixes go straight to the proxy (no middleware on the hot path); everything else to Starlette.

    Exact routes win over the prefixes: /anthropic/v1/log is Helicone's async-log endpoint, not a provider path.
    """

    def __init__(self, app: ASGIApp, proxy: Proxy, exact: set[str]) -> None:
        self.app, self.proxy, self.exact = app, proxy, exact

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIXES) and scope["path"] not in self.exact:
            await self.proxy(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def _every(seconds: float, job: Callable[[], object], what: str) -> None:
    """Run a blocking housekeeping job in a worker thread every `seconds`, logging (not raising) failures."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(job)
        except Exception:
            log.warning("could not %s", what, exc_info=True)
