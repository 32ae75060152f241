"""Dashboard login: signed session cookies, CSRF tokens on every form, rate-limited logins, a one-time setup link."""

from __future__ import annotations

import hmac
import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "llmlens_session"
SESSION_MAX_AGE_S = 14 * 24 * 3600
LOGIN_ATTEMPTS = 10  # per client address and email, per LOGIN_WINDOW_S
LOGIN_WINDOW_S = 300


@dataclass(frozen=True, slots=True)
class WebUser:
    id: str
    org_id: str
    email: str
    csrf: str


def secret_key(configured: str, data_dir: Path) -> str:
    """LLMLENS_SECRET_KEY, else a key generated once and kept (mode 600) in the data dir."""
    if configured:
        return configured
    path = data_dir / "secret_key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


class Sessions:
    def __init__(self, secret: str) -> None:
        self._signer = URLSafeTimedSerializer(secret, salt="llmlens-session")
        self._attempts: dict[str, deque[float]] = defaultdict(deque)
        self.setup_token: str | None = None

    def issue(self, user: dict[str, Any]) -> str:
        return self._signer.dumps({"id": user["id"], "org": user["org_id"], "email": user["email"],
                                   "csrf": secrets.token_urlsafe(24)})

    def read(self, cookie: str | None) -> WebUser | None:
        if not cookie:
            return None
        try:
            data = self._signer.loads(cookie, max_age=SESSION_MAX_AGE_S)
        except BadSignature:
            return None
        return WebUser(data["id"], data["org"], data["email"], data["csrf"])

    @staticmethod
    def csrf_ok(user: WebUser, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(user.csrf, token)

    def allow_login(self, who: str, now: float | None = None) -> bool:
        """False once `who` has failed LOGIN_ATTEMPTS times within LOGIN_WINDOW_S."""
        now = time.monotonic() if now is None else now
        q = self._attempts[who]
        while q and q[0] < now - LOGIN_WINDOW_S:
            q.popleft()
        return len(q) < LOGIN_ATTEMPTS

    def failed_login(self, who: str, now: float | None = None) -> None:
        self._attempts[who].append(time.monotonic() if now is None else now)

    @staticmethod
    def new_form_token() -> str:
        return secrets.token_urlsafe(24)

    def new_setup_token(self) -> str:
        self.setup_token = secrets.token_urlsafe(24)
        return self.setup_token

    def use_setup_token(self, token: str) -> bool:
        ok = self.setup_token is not None and hmac.compare_digest(self.setup_token, token)
        if ok:
            self.setup_token = None
        return ok
