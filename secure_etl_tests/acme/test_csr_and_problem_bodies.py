"""The CSR's subject, and error bodies that are not RFC 7807 problem documents."""

from __future__ import annotations

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from secure_etl.acme.client import AcmeClient, make_csr
from secure_etl.acme.errors import AcmeProblem, quoted
from secure_etl.acme.jws import AccountKey
from secure_etl.acme.transport import Transport
from secure_etl.pki.internal_ca import InternalCA
from secure_etl.pki.keys import generate_private_key

CA = "https://ca.test"
LONG_NAME = "a" * 60 + ".example.com"  # 72 characters: too long for a CN


def _common_names(name: x509.Name) -> list[str]:
    return [a.value for a in name.get_attributes_for_oid(NameOID.COMMON_NAME)]


@pytest.mark.parametrize(
    ("identifiers", "common_names"),
    [
        (["127.0.0.1", "localhost"], ["localhost"]),
        (["::1", LONG_NAME, "b.example.com"], ["b.example.com"]),
        (["127.0.0.1", "::1"], []),
        (["www.example.com", "127.0.0.1"], ["www.example.com"]),
    ],
)
def test_the_csr_common_name_is_the_first_dns_name_that_fits_never_an_ip(identifiers, common_names):
    csr = x509.load_der_x509_csr(make_csr(identifiers, generate_private_key("ec256")))
    assert _common_names(csr.subject) == common_names
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(list(sans)) == len(identifiers)


@pytest.mark.parametrize(
    ("identifiers", "common_names"),
    [
        (["127.0.0.1", "localhost"], ["localhost"]),
        ([LONG_NAME], []),
        (["127.0.0.1"], []),
    ],
)
def test_the_internal_ca_never_puts_an_ip_or_a_cut_name_in_the_cn(
    tmp_path, identifiers, common_names
):
    ca = InternalCA("test", tmp_path / "ca")
    issued = ca.issue(identifiers, "server", generate_private_key("ec256"))
    leaf = x509.load_pem_x509_certificate(issued.cert_pem)
    assert _common_names(leaf.subject) == common_names
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical == (not common_names)  # RFC 5280: an empty subject needs it


def _client_answering(status: int, content: bytes, content_type: str) -> AcmeClient:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers={"Content-Type": content_type})

    http = httpx.Client(transport=httpx.MockTransport(answer))
    return AcmeClient(
        Transport(f"{CA}/dir", client=http), AccountKey(generate_private_key("ec256"))
    )


def test_recorded_html_error_page_gives_status_url_and_its_text_sanitised():
    page = (
        b"<html><head><title>502 Bad Gateway</title></head>\r\n<body>\x1b[31m"
        b"<h1>upstream &amp; proxy down</h1>" + b"<p>x</p>" * 500 + b"</body></html>"
    )
    with pytest.raises(AcmeProblem) as caught:
        _client_answering(502, page, "text/html").register()
    message = str(caught.value)
    assert message.startswith("502 Bad Gateway [31m upstream & proxy down x x")  # ESC dropped
    assert message.endswith(f"… (HTTP 502 from {CA}/dir)")
    assert "\x1b" not in message and "<" not in message and "\n" not in message
    assert caught.value.status == 502


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"errors": ["permission denied"]}', "permission denied"),
        (b'{"errors": ["a", "b"]}', "a; b"),
        (b'{"errors": []}', "no error text"),
        (b'{"message": "quota exceeded"}', "quota exceeded"),
        (b'{"code": 7}', '{"code": 7}'),
        (b"", "no error text"),
        (b"plain text\nsecond line", "plain text second line"),
    ],
)
def test_recorded_non_rfc7807_bodies_keep_the_servers_words(body, expected):
    with pytest.raises(AcmeProblem) as caught:
        _client_answering(403, body, "application/json").register()
    assert str(caught.value) == f"{expected} (HTTP 403 from {CA}/dir)"


def test_a_problem_detail_cannot_smuggle_terminal_controls():
    body = b'{"type": "urn:ietf:params:acme:error:malformed", "detail": "bad\\u001b[2J\\u202enews"}'
    problem = AcmeProblem.from_response(body, 400, f"{CA}/x")
    assert str(problem) == f"malformed: bad [2J news (HTTP 400 from {CA}/x)"
    assert quoted("x" * 1000).endswith("…") and len(quoted("x" * 1000)) == 300
