"""The three ways an alert leaves the Mac: e-mail (SMTP), a webhook (JSON POST), a healthcheck ping.

Standard library only (``smtplib``, ``email``, ``urllib.request``): nothing to install on an old Mac,
and the three protocols are simple. Every network call has a :data:`TIMEOUT`; a channel that fails
raises :class:`ChannelError` naming the channel and why, which the caller logs and retries next run.
The SMTP password is read from ``smtp_password_file`` at send time and never printed or logged.
"""

from __future__ import annotations

import json
import os
import smtplib
import socket
import ssl
import stat
import urllib.error
import urllib.parse
import urllib.request
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Dict

from horos_async.config import NotifyConfig

TIMEOUT = 10.0
"""Seconds any one network call may take before the channel counts as failed."""
USER_AGENT = "horos-backup"


class ChannelError(Exception):
    """A channel could not deliver: the message names the channel and the reason (never a secret)."""


def read_password(path: Path) -> str:
    """The SMTP password from its file, refused when others may read the file (mode must be 600/400)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ChannelError(f"cannot read smtp_password_file {path}: {exc.strerror or exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ChannelError(f"smtp_password_file {path} is readable by other users (mode "
                           f"{stat.S_IMODE(st.st_mode):03o}); refused. Run: chmod 600 '{path}'")
    try:
        return path.read_text(encoding="utf-8").strip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ChannelError(f"cannot read smtp_password_file {path}: {exc}") from None


def send_email(n: NotifyConfig, subject: str, body: str) -> str:
    """Send one e-mail to ``email_to``; returns a line saying where it went."""
    password = read_password(n.smtp_password_file) if n.smtp_password_file else ""
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = n.email_from or n.smtp_user
    msg["To"] = ", ".join(n.email_to)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=socket.gethostname() or "horos-backup")
    msg.set_content(body)
    where = f"e-mail to {', '.join(n.email_to)} via {n.smtp_host}:{n.smtp_port}"
    try:
        if n.smtp_port == 465 and not n.smtp_starttls:
            server: smtplib.SMTP = smtplib.SMTP_SSL(n.smtp_host, n.smtp_port, timeout=TIMEOUT,
                                                    context=ssl.create_default_context())
        else:
            server = smtplib.SMTP(n.smtp_host, n.smtp_port, timeout=TIMEOUT)
        try:
            server.ehlo()
            if n.smtp_starttls:
                server.starttls(context=ssl.create_default_context())
                server.ehlo()
            if n.smtp_user:
                server.login(n.smtp_user, password)
            server.send_message(msg)
        finally:
            try:
                server.quit()
            except (smtplib.SMTPException, OSError):
                server.close()
    except smtplib.SMTPAuthenticationError as exc:
        raise ChannelError(f"{where}: login as {n.smtp_user} refused ({exc.smtp_code}); Gmail and Office 365 "
                           f"need an app password in smtp_password_file") from None
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        raise ChannelError(f"{where}: {_why(exc)}") from None
    return where


def post_webhook(url: str, document: Dict[str, Any]) -> str:
    """POST ``document`` as JSON to ``url``; returns a line saying where it went."""
    data = json.dumps(document, ensure_ascii=False).encode("utf-8")
    _http(url, data, "application/json; charset=utf-8", "webhook")
    return f"webhook {_shown(url)}"


def ping(url: str, body: str = "") -> str:
    """A healthcheck ping (``url`` already carries ``/start``, ``/fail`` or ``/log``), the message as body."""
    _http(url, body.encode("utf-8")[:10000], "text/plain; charset=utf-8", "healthcheck")
    return f"healthcheck {_shown(url)}"


def _http(url: str, data: bytes, content_type: str, what: str) -> None:
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": content_type, "User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            resp.read(4096)
    except urllib.error.HTTPError as exc:
        raise ChannelError(f"{what} {_shown(url)}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ChannelError(f"{what} {_shown(url)}: {_why(exc)}") from None


def _shown(url: str) -> str:
    """The URL without its path and query: a webhook's path is its secret (Slack, ntfy topics)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…" if parts.path.strip("/") or parts.query else url


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(exc, urllib.error.URLError) and reason is not None:
        exc = reason if isinstance(reason, BaseException) else exc
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no answer within {TIMEOUT:.0f} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
