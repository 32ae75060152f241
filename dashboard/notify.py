"""Alert delivery: a signed JSON webhook, a Slack incoming webhook, and email over SMTP.

Each sender raises DeliveryError with a message a user can act on; retries and bookkeeping live in alerts.py.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import smtplib
import ssl
import time
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import orjson

SIGNATURE_HEADER = "X-Llmlens-Signature"
TIMEOUT_S = 10.0


class DeliveryError(Exception):
    """A notification did not reach its channel; the message says where and why."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`; the timestamp lets a receiver refuse replays."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: int = 300, now: float | None = None) -> bool:
    """What a receiver does with the signature header (shown in the README)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        ts = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((now or time.time()) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), header)


def describe(channel: dict[str, Any]) -> str:
    if channel["type"] == "email":
        return "email to " + ", ".join(channel["to"])
    host = urlsplit(channel["url"]).netloc
    return f"{channel['type']} {host}"


def send(channel: dict[str, Any], payload: dict[str, Any], *, secret: str, smtp_url: str, mail_from: str) -> None:
    kind = channel["type"]
    if kind == "webhook":
        _webhook(channel["url"], payload, secret)
    elif kind == "slack":
        _post(channel["url"], orjson.dumps({"text": slack_text(payload)}), {"Content-Type": "application/json"})
    elif kind == "email":
        _email(smtp_url, mail_from, channel["to"], payload)
    else:  # rules are validated on the way in; a stored unknown type means a newer llmlens wrote it
        raise DeliveryError(f"unknown channel type {kind!r}")


def _webhook(url: str, payload: dict[str, Any], secret: str) -> None:
    body = orjson.dumps(payload)
    headers = {"Content-Type": "application/json", "User-Agent": "llmlens-alerts",
               SIGNATURE_HEADER: sign(secret, int(time.time()), body), "X-Llmlens-Event": payload["event"]}
    _post(url, body, headers)


def _post(url: str, body: bytes, headers: dict[str, str]) -> None:
    try:
        resp = httpx.post(url, content=body, headers=headers, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"POST {urlsplit(url).netloc} failed: {exc.__class__.__name__}: {exc}") from None
    if not 200 <= resp.status_code < 300:
        raise DeliveryError(f"POST {urlsplit(url).netloc} answered {resp.status_code}: {resp.text[:200]}")


def headline(p: dict[str, Any]) -> str:
    state = {"fired": "FIRING", "resolved": "RESOLVED", "test": "TEST"}[p["event"]]
    group = f" [{p['group_by']}={p['group']}]" if p.get("group") else ""
    return f"{state}: {p['rule']['name']}{group}"


def summary(p: dict[str, Any]) -> str:
    window = "month to date" if p["rule"]["metric"] == "projected_month_spend" else f"over the last {p['window']}"
    return (f"{p['metric_label']} is {p['value_text']} (alert when {p['comparator']} {p['threshold_text']}) {window}, "
            f"{p['requests']} requests.")


def slack_text(p: dict[str, Any]) -> str:
    return f"*{headline(p)}*\n{summary(p)}\n<{p['url']}|Open the matching requests>"


def _email(smtp_url: str, mail_from: str, to: list[str], p: dict[str, Any]) -> None:
    if not smtp_url:
        raise DeliveryError("email needs LLMLENS_SMTP_URL to be set")
    msg = EmailMessage()
    msg["Subject"] = f"[llmlens] {headline(p)}"
    msg["From"] = mail_from
    msg["To"] = ", ".join(to)
    msg.set_content(f"{headline(p)}\n\n{summary(p)}\n\nMatching requests: {p['url']}\n")
    msg.add_alternative(
        f"<h2>{html.escape(headline(p))}</h2><p>{html.escape(summary(p))}</p>"
        f'<p><a href="{html.escape(p["url"])}">Open the matching requests</a></p>', subtype="html")
    u = urlsplit(smtp_url)
    host, secure = u.hostname or "localhost", u.scheme == "smtps"
    port = u.port or (465 if secure else 587)
    try:
        smtp: smtplib.SMTP = (smtplib.SMTP_SSL(host, port, timeout=TIMEOUT_S, context=ssl.create_default_context())
                              if secure else smtplib.SMTP(host, port, timeout=TIMEOUT_S))
        with smtp:
            smtp.ehlo()
            if not secure and smtp.has_extn("starttls"):
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if u.username:
                smtp.login(unquote(u.username), unquote(u.password or ""))
            smtp.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"SMTP {host}:{port} failed: {exc.__class__.__name__}: {exc}") from None
