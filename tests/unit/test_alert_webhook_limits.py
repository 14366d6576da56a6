"""The alert webhook's pure parts: the bearer token check (any header bytes, never raises),
the body limit from DR_WEBHOOK_MAX_BODY_BYTES, and the body read that stops at the limit.
The HTTP behaviour on a real api-server is tests/e2e/test_alert_webhook.py."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path

import pytest

from tracktion_dr.core.errors import InvalidInput

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "dr_alert_webhook.py"
TOKEN = "k_QIMK72Ozfz8cFtfU3K2jTtjOJIqQBc"  # noqa: S105 (a made-up test token)


@pytest.fixture(scope="module")
def webhook():
    """The plugin module, imported from plugins/ as Airflow's plugin manager does."""
    spec = importlib.util.spec_from_file_location("dr_alert_webhook_under_test", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the token -------------------------------------------------------------------------


def test_the_configured_token_matches(webhook):
    assert webhook.bearer_token_matches([b"Bearer " + TOKEN.encode()], TOKEN)
    assert webhook.bearer_token_matches([b"bearer " + TOKEN.encode()], TOKEN)  # RFC 9110


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"Bearer",
        b"Bearer ",
        b"Basic " + TOKEN.encode(),
        TOKEN.encode(),
        b"Bearer  " + TOKEN.encode(),
        b"Bearer\t" + TOKEN.encode(),
        b"Bearer " + TOKEN.encode() + b" ",
        b"Bearer " + TOKEN.encode() + b" x",
        b"Bearer " + TOKEN[:-1].encode(),
        b"Bearer " + TOKEN.encode() + "é".encode(),
        "Bearer tëst-tökén".encode(),
        b"Bearer t\xe9st",
        b"Bearer \xff\xfe\x00" + TOKEN.encode(),
        b"Bearer " + b"A" * 1_000_000,
    ],
    ids=lambda value: repr(value[:24]),
)
def test_any_other_header_value_is_refused_without_raising(webhook, value):
    assert webhook.bearer_token_matches([value], TOKEN) is False


def test_no_header_or_two_headers_are_refused(webhook):
    good = b"Bearer " + TOKEN.encode()
    assert webhook.bearer_token_matches([], TOKEN) is False
    assert webhook.bearer_token_matches([good, good], TOKEN) is False
    assert webhook.bearer_token_matches([good], "") is False


def test_a_non_ascii_configured_token_is_compared_as_its_utf8_bytes(webhook):
    expected = "jeton-secrèt-✓"
    assert webhook.bearer_token_matches([b"Bearer " + expected.encode()], expected)
    assert not webhook.bearer_token_matches(
        [b"Bearer " + expected.encode("latin-1", "replace")], expected
    )
    # A DR_WEBHOOK_TOKEN that is not UTF-8 reaches Python surrogate-escaped: its own bytes.
    from_environ = b"tok\xe9n".decode("utf-8", "surrogateescape")
    assert webhook.bearer_token_matches([b"Bearer tok\xe9n"], from_environ)


def test_authorization_headers_are_taken_raw_whatever_the_name_case(webhook):
    raw = [(b"host", b"x"), (b"Authorization", b"Bearer \xff"), (b"authorization", b"b")]
    assert webhook.authorization_headers(raw) == [b"Bearer \xff", b"b"]


# --- the body limit --------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_unset_limit_is_the_default(webhook, raw):
    assert webhook.parse_body_limit(raw) == (1024 * 1024, None)


@pytest.mark.parametrize(
    ("raw", "limit"), [("2048", 2048), (" 4194304 ", 4194304), ("2_097_152", 2097152)]
)
def test_a_valid_limit_is_taken(webhook, raw, limit):
    assert webhook.parse_body_limit(raw) == (limit, None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("1MiB", "is not a whole number of bytes"),
        ("1e6", "is not a whole number of bytes"),
        ("abc", "is not a whole number of bytes"),
        ("-5", "is below the minimum of 1024 bytes"),
        ("0", "is below the minimum of 1024 bytes"),
        ("100", "is below the minimum of 1024 bytes"),
        ("999999999999", "is above the maximum of 67108864 bytes"),
    ],
)
def test_a_bad_limit_falls_back_to_the_default_and_says_why(webhook, raw, reason):
    limit, problem = webhook.parse_body_limit(raw)
    assert limit == 1024 * 1024
    assert problem == (
        f"DR_WEBHOOK_MAX_BODY_BYTES={raw!r} {reason}; using the default of 1048576 bytes"
    )


def test_a_bad_limit_is_logged_once_at_configuration(webhook, caplog):
    with caplog.at_level(logging.INFO, logger=webhook.log.name):
        assert webhook._configured_body_limit({"DR_WEBHOOK_MAX_BODY_BYTES": "lots"}) == 1048576
        assert webhook._configured_body_limit({"DR_WEBHOOK_MAX_BODY_BYTES": "4096"}) == 4096
        assert webhook._configured_body_limit({}) == 1048576
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "alert webhook: DR_WEBHOOK_MAX_BODY_BYTES='lots' is not a whole number of bytes;"
            " using the default of 1048576 bytes",
        ),
        ("INFO", "alert webhook: body limit 4096 bytes (DR_WEBHOOK_MAX_BODY_BYTES)"),
    ]


# --- reading the body within the limit ---------------------------------------------------


class Chunks:
    """An ASGI body stream stand-in that counts what was taken from it."""

    def __init__(self, *chunks: bytes):
        self.chunks = list(chunks)
        self.taken = 0

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        if self.taken == len(self.chunks):
            raise StopAsyncIteration
        self.taken += 1
        return self.chunks[self.taken - 1]


def read(webhook, declared, chunks, limit):
    return asyncio.run(webhook.read_limited_body(declared, chunks, limit))


def test_a_body_within_the_limit_is_read_whole(webhook):
    assert read(webhook, "6", Chunks(b"abc", b"def"), 6) == b"abcdef"
    assert read(webhook, None, Chunks(b"abc", b"def"), 6) == b"abcdef"


def test_a_declared_length_over_the_limit_is_refused_before_reading(webhook):
    chunks = Chunks(b"x" * 10)
    with pytest.raises(webhook.BodyTooLarge, match="11 bytes declared, over the limit of 10"):
        read(webhook, "11", chunks, 10)
    assert chunks.taken == 0


def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_limit(webhook):
    chunks = Chunks(b"x" * 4, b"x" * 4, b"x" * 4, b"x" * 4)
    with pytest.raises(webhook.BodyTooLarge, match="more than the limit of 10 bytes"):
        read(webhook, None, chunks, 10)
    assert chunks.taken == 3


def test_a_content_length_that_is_not_a_number_is_invalid_input(webhook):
    with pytest.raises(InvalidInput, match="Content-Length: is not a whole number") as caught:
        read(webhook, "ten", Chunks(b"x"), 10)
    assert not isinstance(caught.value, webhook.BodyTooLarge)
