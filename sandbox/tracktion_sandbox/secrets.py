"""Generated sandbox passwords: created once per sandbox home, kept in a 0600 file.

Nothing here is committed to git; the Airflow side only ever sees these through the
``AIRFLOW_CONN_*`` environment file that ``connections.py`` writes.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass

from tracktion_sandbox.layout import SandboxLayout


@dataclass(frozen=True)
class SandboxSecrets:
    postgres_password: str
    app_password: str
    replication_password: str
    supervisor_user: str
    supervisor_password: str
    webhook_token: str


def _generate() -> SandboxSecrets:
    return SandboxSecrets(
        postgres_password=secrets.token_urlsafe(18),
        app_password=secrets.token_urlsafe(18),
        replication_password=secrets.token_urlsafe(18),
        supervisor_user="dr",
        supervisor_password=secrets.token_urlsafe(18),
        webhook_token=secrets.token_urlsafe(24),
    )


def load_or_create(layout: SandboxLayout) -> SandboxSecrets:
    """Return the sandbox's secrets, generating them on first use."""
    path = layout.secrets_file
    if path.exists():
        return SandboxSecrets(**json.loads(path.read_text()))
    layout.home.mkdir(parents=True, exist_ok=True)
    generated = _generate()
    # O_EXCL + 0600: never readable by others, never silently overwritten.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(generated), handle)
    return generated
