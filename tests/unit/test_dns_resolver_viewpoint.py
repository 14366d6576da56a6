"""A ``resolver`` viewpoint asks a DNS server over UDP (dnspython). No resolver serves the
sandbox's zone, so this test runs a small one on loopback: it answers one CNAME and one A
record, says NXDOMAIN for the rest; a port where nothing answers stands for a resolver
that is down."""

from __future__ import annotations

import socket
import threading

import dns.message
import dns.rcode
import dns.rrset
import pytest

from tracktion_dr.services import dns as records

ZONE = {
    ("api.tracktion.test.", "CNAME"): ["api.recovery.tracktion.test."],
    ("status.tracktion.test.", "A"): ["127.0.0.1", "127.0.0.2"],
}


@pytest.fixture()
def resolver():
    """(address, port) of a UDP DNS server answering from ZONE."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                wire, client = server.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            question = query.question[0]
            answer = dns.message.make_response(query)
            key = (question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype))
            if key in ZONE:
                answer.answer.append(
                    dns.rrset.from_text_list(question.name, 60, "IN", key[1], ZONE[key])
                )
            elif not any(name == key[0] for name, _ in ZONE):
                answer.set_rcode(dns.rcode.NXDOMAIN)
            server.sendto(answer.to_wire(), client)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()
    stop.set()
    thread.join()
    server.close()


def test_a_resolver_answers_cname_and_a_records(resolver):
    address, port = resolver
    assert records.resolver_values(address, port, "API.tracktion.test", "CNAME", 2) == [
        "api.recovery.tracktion.test"
    ]
    assert sorted(records.resolver_values(address, port, "status.tracktion.test", "A", 2)) == [
        "127.0.0.1",
        "127.0.0.2",
    ]


def test_no_such_name_and_no_such_record_are_none(resolver):
    address, port = resolver
    assert records.resolver_values(address, port, "ghost.tracktion.test", "A", 2) is None
    assert records.resolver_values(address, port, "api.tracktion.test", "A", 2) is None


def test_a_resolver_that_does_not_answer_is_named_within_its_timeout():
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        address, port = silent.getsockname()
        with pytest.raises(
            records.DnsError, match=f"the resolver {address} did not answer within 0.5s"
        ):
            records.resolver_values(address, port, "api.tracktion.test", "CNAME", 0.5)
    finally:
        silent.close()
