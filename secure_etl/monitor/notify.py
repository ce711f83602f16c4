"""Notifications through Slack incoming webhooks, a generic JSON webhook and SMTP.

Every URL and secret comes from the environment (the config names the variables). A
Slack or webhook channel with a ``proxy`` posts through its HTTP CONNECT tunnel, and
only to an https URL (the proxy would read anything else); email has no proxy. A
delivery is retried with exponential backoff, never sooner than a server's Retry-After;
what still fails is reported back to the caller, never raised, so a broken channel
cannot stop the sensor that notifies.
"""

from __future__ import annotations

import email.policy
import os
import smtplib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage

import httpx

from secure_etl.acme.retry import Backoff, GaveUp, retry
from secure_etl.acme.transport import parse_retry_after
from secure_etl.config import (
    AlertsConfig,
    EmailChannel,
    ProxyConfig,
    SlackChannel,
    WebhookChannel,
)
from secure_etl.security.proxy import ProxyError, configured_proxy
from secure_etl.security.tls import verifying_context


@dataclass(frozen=True)
class Notification:
    """One event worth telling people about."""

    kind: str  # "check_failed", "check_recovered", "run_failed"
    title: str  # one line
    text: str  # a few lines, no data values
    severity: str  # "ERROR" or "WARN"
    dedupe_key: str  # the same event never goes out twice under this key
    fields: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {
            "source": "secure_etl",
            "kind": self.kind,
            "severity": self.severity,
            "title": self.title,
            "text": self.text,
            "dedupe_key": self.dedupe_key,
            **self.fields,
        }


@dataclass(frozen=True)
class Delivery:
    channel: str
    ok: bool
    attempts: int
    error: str = ""


class DeliveryError(Exception):
    """A channel refused or could not take a notification; ``retry_after``: the seconds
    its server asked us to wait (Retry-After), if it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Channel:
    name: str

    def send(self, notification: Notification) -> None:
        raise NotImplementedError


def _env(variable: str, what: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise DeliveryError(f"{what}: the environment variable {variable} is not set")
    return value


class _Http(Channel):
    def __init__(
        self,
        url_env: str,
        ca_bundle: str | None,
        timeout_s: float,
        proxy: ProxyConfig | None = None,
        min_tls: str | None = None,
    ) -> None:
        self.url_env, self.ca_bundle, self.timeout_s = url_env, ca_bundle, timeout_s
        self.proxy = proxy
        self.min_tls = min_tls  # None: the security policy's default

    def _through(self, url: str) -> httpx.Proxy | None:
        if self.proxy is None:
            return None
        if not url.lower().startswith("https://"):
            raise DeliveryError(
                f"{self.name}: ${self.url_env} is not an https:// URL; through the proxy only "
                "https is sent (the proxy would read anything else)"
            )
        try:
            return configured_proxy(self.proxy)
        except ProxyError as err:
            raise DeliveryError(f"{self.name}: {err}") from None

    def _post(self, body: dict) -> None:
        url = _env(self.url_env, self.name)
        verify = verifying_context(self.ca_bundle, self.min_tls)
        proxy = self._through(url)
        try:
            response = httpx.post(
                url, json=body, timeout=self.timeout_s, verify=verify, proxy=proxy
            )
        except httpx.HTTPError as err:  # the URL is a secret: never in the message
            reason = str(err).replace(url, f"${self.url_env}")
            raise DeliveryError(f"{self.name}: {type(err).__name__}: {reason}") from None
        if not response.is_success:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            raise DeliveryError(f"{self.name}: HTTP {response.status_code}", retry_after=wait)


class Slack(_Http):
    """A Slack incoming webhook: a text with a one-line header."""

    name = "slack"

    def send(self, notification: Notification) -> None:
        icon = {"check_recovered": ":white_check_mark:"}.get(notification.kind, ":rotating_light:")
        self._post({"text": f"{icon} *{notification.title}*\n{notification.text}"})


class Webhook(_Http):
    """Any receiver of a JSON POST: the notification's fields as one object."""

    name = "webhook"

    def send(self, notification: Notification) -> None:
        self._post(notification.as_json())


class Email(Channel):
    """Mail over SMTP: STARTTLS (or implicit TLS) unless ``tls: none`` is set explicitly
    for a relay on the same host; login when a user is configured."""

    name = "email"

    def __init__(self, config: EmailChannel) -> None:
        self.config = config

    def send(self, notification: Notification) -> None:
        c = self.config
        # One-line headers (RFC 5322 allows 998 characters): folding a long subject
        # right after "Subject:" leaves a leading space in some readers.
        message = EmailMessage(policy=email.policy.SMTP.clone(max_line_length=998))
        message["From"], message["To"] = c.sender, ", ".join(c.recipients)
        message["Subject"] = f"[secure_etl {notification.severity}] {notification.title}"
        message.set_content(notification.text + "\n\n" + notification.dedupe_key + "\n")
        context = verifying_context(c.ca_bundle, c.min_tls)
        try:
            if c.tls == "implicit":
                client = smtplib.SMTP_SSL(
                    c.host,
                    c.port,
                    timeout=c.timeout_s,
                    context=context,
                )
            else:
                client = smtplib.SMTP(c.host, c.port, timeout=c.timeout_s)
            with client:
                if c.tls == "starttls":
                    client.starttls(context=context)
                if c.username_env:
                    client.login(_env(c.username_env, "email"), _env(c.password_env or "", "email"))
                client.send_message(message)
        except (OSError, smtplib.SMTPException) as err:
            raise DeliveryError(f"email: {type(err).__name__}: {err}") from None


def channels_for(config: AlertsConfig) -> list[Channel]:
    out: list[Channel] = []
    for channel in config.channels:
        if isinstance(channel, SlackChannel | WebhookChannel):
            kind = Slack if isinstance(channel, SlackChannel) else Webhook
            out.append(
                kind(
                    channel.url_env,
                    channel.ca_bundle,
                    channel.timeout_s,
                    channel.proxy,
                    channel.min_tls,
                )
            )
        else:
            out.append(Email(channel))
    return out


SEVERITY_RANK = {"WARN": 1, "ERROR": 2}


def deliver(
    notification: Notification,
    channels: Sequence[Channel],
    attempts: int = 3,
    backoff_s: float = 1.0,
    log: Callable[[str], None] = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
    deadline: float | None = None,
) -> list[Delivery]:
    """Send through every channel, each up to ``attempts`` times with exponential
    backoff, starting no attempt after ``deadline`` (``time.monotonic()``); returns what
    happened per channel and never raises."""
    return [
        _deliver_one(notification, channel, attempts, backoff_s, log, sleep, deadline)
        for channel in channels
    ]


def _deliver_one(notification, channel, attempts, backoff_s, log, sleep, deadline) -> Delivery:
    tried = 0

    def send(attempt: int) -> None:
        nonlocal tried
        tried = attempt
        try:
            channel.send(notification)
        except DeliveryError as err:
            log(f"{channel.name}: attempt {attempt}/{attempts} failed: {err}")
            raise

    # No wait longer than the backoff's own last one: a Retry-After beyond it gives up.
    policy = Backoff(attempts, backoff_s, max_s=backoff_s * 2 ** max(0, attempts - 2))
    try:
        retry(send, policy, deadline=deadline, retry_on=DeliveryError, sleep=sleep)
    except GaveUp as gave_up:
        error = str(gave_up.last) if gave_up.last else "no time left in this round"
        return Delivery(channel.name, False, gave_up.attempts, error)
    except Exception as err:  # a bug in one channel must not stop the others
        error = f"{channel.name}: {type(err).__name__}: {err}"
        log(error)
        return Delivery(channel.name, False, tried, error)
    return Delivery(channel.name, True, tried)
