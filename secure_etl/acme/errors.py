"""Typed ACME errors: every problem document (RFC 7807 / RFC 8555 §6.7) becomes one."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass

ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"
# How much of a server's own text an error message quotes.
QUOTED_TEXT_LIMIT = 300
_TAG = re.compile(r"<[^>]*>")
# Control characters, and the invisible ones that reorder what a terminal shows.
_UNPRINTABLE = re.compile(r"[^\S ]|[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


class AcmeError(Exception):
    """Anything that went wrong talking ACME."""


@dataclass(frozen=True)
class Subproblem:
    type: str
    detail: str
    identifier: str | None = None

    def __str__(self) -> str:
        where = f"{self.identifier}: " if self.identifier else ""
        return f"{where}{short_type(self.type)}: {self.detail}"


class AcmeProblem(AcmeError):
    """A problem document from the server, with its type, detail and subproblems."""

    def __init__(
        self,
        type: str,
        detail: str = "",
        status: int | None = None,
        subproblems: tuple[Subproblem, ...] = (),
        url: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.type, self.detail, self.status = type, detail, status
        self.subproblems, self.url, self.retry_after = tuple(subproblems), url, retry_after
        if type == "about:blank":
            # Not RFC 7807 (or saying nothing): the server's own words, or that there were none.
            text = detail or "no error text"
        else:
            text = f"{short_type(type)}: {detail}" if detail else short_type(type)
        if status:
            text += f" (HTTP {status} from {url})" if url else f" (HTTP {status})"
        if subproblems:
            text += "; " + "; ".join(str(s) for s in subproblems)
        if retry_after is not None:
            text += f"; retry after {retry_after:.0f} s"
        super().__init__(text)

    @property
    def short_type(self) -> str:
        return short_type(self.type)

    @classmethod
    def from_response(
        cls, body: bytes, status: int, url: str, retry_after: float | None = None
    ) -> AcmeProblem:
        """The problem an error response describes, whatever its body: a problem document,
        another JSON error (Vault's ``{"errors": [...]}``), an HTML page or nothing."""
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            text = body[:65536].decode(errors="replace")
            if text.lstrip().startswith("<"):
                text = html.unescape(_TAG.sub(" ", text))
            parsed = {"detail": text}
        return cls.from_json(parsed, status, url, retry_after)

    @classmethod
    def from_json(
        cls, body: dict, status: int | None = None, url: str = "", retry_after: float | None = None
    ) -> AcmeProblem:
        subproblems = tuple(
            Subproblem(
                type=quoted(str(s.get("type", ""))),
                detail=quoted(str(s.get("detail", ""))),
                identifier=(s.get("identifier") or {}).get("value"),
            )
            for s in body.get("subproblems") or ()
            if isinstance(s, dict)
        )
        kind = quoted(str(body.get("type") or "about:blank"))
        problem_class = PROBLEM_CLASSES.get(short_type(kind), AcmeProblem)
        return problem_class(kind, _detail(body), status, subproblems, url, retry_after)


class BadNonce(AcmeProblem):
    """The server refused the nonce; the transport retries these (bounded)."""


class RateLimited(AcmeProblem):
    """Too many requests; ``retry_after`` says when to come back, if the server said."""


class AccountDoesNotExist(AcmeProblem):
    """No account for this key (onlyReturnExisting, or the CA forgot it)."""


class Unauthorized(AcmeProblem):
    pass


class ExternalAccountRequired(AcmeProblem):
    pass


class UserActionRequired(AcmeProblem):
    """Usually new terms of service to agree to."""


PROBLEM_CLASSES: dict[str, type[AcmeProblem]] = {
    "badNonce": BadNonce,
    "rateLimited": RateLimited,
    "accountDoesNotExist": AccountDoesNotExist,
    "unauthorized": Unauthorized,
    "externalAccountRequired": ExternalAccountRequired,
    "userActionRequired": UserActionRequired,
}


def short_type(kind: str) -> str:
    return kind.removeprefix(ACME_ERROR_PREFIX)


def _detail(body: dict) -> str:
    """The human text of an error body: RFC 7807's ``detail``, else Vault's ``errors``
    list or a ``message``/``error`` string, else the body itself, quoted."""
    if "detail" in body:
        return quoted(str(body["detail"]))
    if isinstance(body.get("errors"), list):
        return quoted("; ".join(str(e) for e in body["errors"] if e))
    for key in ("message", "error"):
        if isinstance(body.get(key), str):
            return quoted(body[key])
    if "type" in body:
        return ""
    return quoted(json.dumps(body, ensure_ascii=False))


def quoted(text: str, limit: int = QUOTED_TEXT_LIMIT) -> str:
    """A server's text made safe to print: control characters out, whitespace collapsed,
    cut to ``limit`` characters."""
    text = " ".join(_UNPRINTABLE.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ProtocolError(AcmeError):
    """The server answered something RFC 8555 does not allow here."""


class CaUnreachable(ProtocolError):
    """The CA could not be reached: the connection was refused, reset or timed out."""


class PollTimeout(AcmeError):
    """An order or authorization did not reach a final state in time."""


class AuthorizationFailed(AcmeError):
    """The CA could not validate control of an identifier; says which and why."""

    def __init__(
        self, identifier: str, challenge_type: str, problem: AcmeProblem | None, reason: str
    ) -> None:
        self.identifier, self.challenge_type = identifier, challenge_type
        self.problem, self.reason = problem, reason
        why = str(problem) if problem else reason
        super().__init__(f"{challenge_type} validation of {identifier} failed: {why}")


class OrderFailed(AcmeError):
    """The order became invalid."""

    def __init__(self, url: str, problem: AcmeProblem | None) -> None:
        self.url, self.problem = url, problem
        super().__init__(f"order {url} is invalid" + (f": {problem}" if problem else ""))
