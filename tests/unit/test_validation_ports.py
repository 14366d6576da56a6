"""security_posture's listening ports, read from /proc/net/tcp: Docker's embedded DNS server
(127.0.0.11, a random port in every container of a compose network) is not the host's."""

from __future__ import annotations

from tracktion_dr.scenarios.validation import listening_ports

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
# 0.0.0.0:18001 listening; 127.0.0.11:36477 listening (Docker's DNS); 127.0.0.1:8793
# listening; 10.0.0.5:55432 established (not a listener).
TCP = HEADER + "\n".join(
    [
        "   0: 00000000:4651 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0",
        "   1: 0B00007F:8E7D 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0",
        "   2: 0100007F:2259 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0",
        "   3: 0500000A:D830 0600000A:D830 01 00000000:00000000 00:00000000 00000000 0",
    ]
)
TCP6 = HEADER + (
    "   0: 00000000000000000000000000000000:2259 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000 0"
)


def test_listeners_but_dockers_embedded_dns_are_the_hosts_ports(tmp_path):
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    tables = (str(tmp_path / "tcp"), str(tmp_path / "tcp6"), str(tmp_path / "absent"))
    assert listening_ports(tables) == {18001, 8793}
