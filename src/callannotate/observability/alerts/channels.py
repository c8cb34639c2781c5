"""Where alert notices go: a signed webhook (one per URL) and e-mail over SMTP.

A channel's :meth:`send` makes one attempt and raises :class:`DeliveryError` (saying whether
another attempt could succeed); :func:`deliver` retries with exponential backoff and jitter
(tenacity; ``alerts.max_attempts``, ``alerts.backoff_*``) through the receiver's circuit
breaker (``alerts_webhook`` per URL, ``alerts_email``; ``alerts.breaker_*``), and counts every
outcome in ``callannotate_alert_notifications_total{channel, outcome}`` and
``callannotate_webhook_deliveries_total{kind="alert"}`` / ``callannotate_email_deliveries_total``.

Webhook bodies are signed exactly like job callbacks (:func:`callannotate.jobs.callbacks.sign`,
header ``X-CallAnnotate-Signature: t=<unix seconds>,v1=<hex>``), so one receiver verifies
both with :func:`callannotate.jobs.callbacks.verify_signature`. Webhook URLs come from the
operator's settings, not from users, so they may point at private addresses.

E-mail uses the standard library's :mod:`smtplib` in a thread: STARTTLS with certificate and
host name checks (``alerts.smtp_ca_file`` adds a private CA), then AUTH when a user is set.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Protocol

import httpx
import tenacity

from callannotate import __version__
from callannotate.config import AlertSettings, Settings
from callannotate.jobs.callbacks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign
from callannotate.observability.alerts.notice import Notice
from callannotate.observability.metrics import (
    ALERT_NOTIFICATIONS,
    EMAIL_DELIVERIES,
    WEBHOOK_DELIVERIES,
)
from callannotate.resilience.breakers import Breaker, CircuitOpen
from callannotate.resilience.retry import RetryPolicy, async_retrying

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429})


class DeliveryError(Exception):
    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def _worth_retrying(exc: BaseException) -> bool:
    if isinstance(exc, DeliveryError):
        return exc.retry
    return isinstance(exc, TimeoutError | CircuitOpen)


class Channel(Protocol):
    name: str  # the metric label: "webhook" or "email"
    target: str  # for logs: the URL or the recipients
    breaker: Breaker  # alerts_webhook (one circuit per URL) or alerts_email
    key: str  # the circuit's key

    async def send(self, notice: Notice) -> None: ...

    async def close(self) -> None: ...


class WebhookChannel:
    name = "webhook"

    def __init__(
        self, url: str, cfg: AlertSettings, secret: bytes | None, breaker: Breaker
    ) -> None:
        self.target = url
        self.url = url
        self.breaker = breaker
        self.key = url
        self.secret = secret
        # No proxies from the environment, no redirects: the operator's URL, as configured.
        self._client = httpx.AsyncClient(
            timeout=cfg.timeout_s, follow_redirects=False, trust_env=False
        )

    async def send(self, notice: Notice) -> None:
        body = notice.to_json()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"callannotate/{__version__}",
            EVENT_HEADER: notice.event,
            DELIVERY_HEADER: notice.id,
        }
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret, body, int(time.time()))
        try:
            response = await self._client.post(self.url, content=body, headers=headers)
        except (httpx.HTTPError, OSError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}"[:300], retry=True) from exc
        status = response.status_code
        if not 200 <= status < 300:
            retry = status >= 500 or status in RETRY_STATUSES
            raise DeliveryError(f"HTTP {status}", retry=retry)

    async def close(self) -> None:
        await self._client.aclose()


class EmailChannel:
    name = "email"

    def __init__(self, cfg: AlertSettings, breaker: Breaker) -> None:
        self.cfg = cfg
        self.target = ", ".join(cfg.email_to)
        self.breaker = breaker
        self.key = ""

    def message(self, notice: Notice) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = notice.subject()
        msg["From"] = self.cfg.email_from
        msg["To"] = ", ".join(self.cfg.email_to)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(idstring=notice.id, domain="callannotate")
        msg["X-CallAnnotate-Alert"] = notice.alert
        msg["X-CallAnnotate-Event"] = notice.event
        msg.set_content(notice.text())
        return msg

    async def send(self, notice: Notice) -> None:
        message = self.message(notice)
        try:
            await asyncio.wait_for(
                asyncio.to_thread(self._send_blocking, message), self.cfg.timeout_s + 5
            )
        except smtplib.SMTPResponseException as exc:  # includes auth and sender refusals
            code = int(exc.smtp_code)
            raise DeliveryError(f"SMTP {code} {exc.smtp_error!r}"[:300], retry=code < 500) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(
                f"recipients refused: {codes}", retry=all(c < 500 for c in codes)
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:  # no STARTTLS / AUTH: a setup problem
            raise DeliveryError(f"SMTP: {exc}"[:300], retry=False) from exc
        except (smtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}"[:300], retry=True) from exc

    def _send_blocking(self, message: EmailMessage) -> None:
        cfg = self.cfg
        with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_s) as smtp:
            smtp.ehlo()
            if cfg.smtp_starttls:
                context = ssl.create_default_context()
                if cfg.smtp_ca_file is not None:
                    context.load_verify_locations(cafile=str(cfg.smtp_ca_file))
                smtp.starttls(context=context)  # raises when the server does not offer it
                smtp.ehlo()
            if cfg.smtp_username:
                password = cfg.smtp_password.get_secret_value() if cfg.smtp_password else ""
                smtp.login(cfg.smtp_username, password)
            smtp.send_message(message)

    async def close(self) -> None:
        return None


def build_channels(settings: Settings) -> list[Channel]:
    """Every configured receiver: one webhook channel per URL, one e-mail channel."""
    cfg = settings.alerts
    secret_setting = cfg.webhook_secret or settings.callbacks.secret
    secret = secret_setting.get_secret_value().encode() if secret_setting else None
    channels: list[Channel] = []
    if cfg.webhook_urls:
        hooks = Breaker(
            "alerts_webhook",
            failures=cfg.breaker_failures,
            reset_s=cfg.breaker_reset_s,
            is_failure=_worth_retrying,
        )
        channels += [WebhookChannel(url, cfg, secret, hooks) for url in cfg.webhook_urls]
    if cfg.webhook_urls and secret is None:
        log.warning("alerts.webhook_secret and callbacks.secret unset: alert webhooks unsigned")
    if cfg.email_to:
        smtp = Breaker(
            "alerts_email",
            failures=cfg.breaker_failures,
            reset_s=cfg.breaker_reset_s,
            is_failure=_worth_retrying,
        )
        channels.append(EmailChannel(cfg, smtp))
    return channels


def _count(channel: Channel, result: str) -> None:
    if channel.name == "email":
        EMAIL_DELIVERIES.labels(result).inc()
    else:
        WEBHOOK_DELIVERIES.labels("alert", result).inc()


async def deliver(channel: Channel, notice: Notice, cfg: AlertSettings) -> bool:
    """Send ``notice`` on ``channel``, retrying what may succeed later; True when delivered."""
    extra: dict[str, Any] = {
        "alert": notice.alert,
        "status": notice.status,
        "channel": channel.name,
        "target": channel.target,
    }
    policy = RetryPolicy(cfg.max_attempts, cfg.backoff_initial_s, cfg.backoff_max_s)
    attempts = 0

    def retrying(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        ALERT_NOTIFICATIONS.labels(channel.name, "retried").inc()
        _count(channel, "circuit_open" if isinstance(exc, CircuitOpen) else "retried")
        error = str(exc) or "timed out"
        log.info("alert delivery failed; retrying", extra={**extra, "error": error})

    try:
        async for attempt in async_retrying(
            policy, retry_if=_worth_retrying, before_sleep=retrying
        ):
            with attempt:
                attempts += 1
                with channel.breaker.guard(channel.key):
                    async with asyncio.timeout(cfg.timeout_s + 5):
                        await channel.send(notice)
    except (DeliveryError, TimeoutError, CircuitOpen) as exc:
        ALERT_NOTIFICATIONS.labels(channel.name, "failed").inc()
        _count(channel, "failed")
        error = str(exc) or "timed out"
        log.warning("alert not delivered", extra={**extra, "error": error, "attempts": attempts})
        return False
    ALERT_NOTIFICATIONS.labels(channel.name, "delivered").inc()
    _count(channel, "delivered")
    log.info("alert delivered", extra={**extra, "attempts": attempts})
    return True
