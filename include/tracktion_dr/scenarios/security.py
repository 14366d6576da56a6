"""dr_security_incident's decisions: contain, preserve, recover beside, swap, rotate.

Order matters and is the point of the scenario: the compromised roles are blocked and the
services taken out of the load balancer first (containment), the evidence is copied to an
object-locked bucket **before** anything is repaired, the clean point is restored beside
the compromised database (which is kept, renamed aside, never dropped), and only then are
the application's credentials rotated - the old password proven refused, the services
healthy on the new one and back in the balancer.

Every step reads the actual state first and does only what is missing (a role already
NOLOGIN is not altered again, evidence already stored is verified not re-uploaded, a
validated copy is not restored again, a rotation already done is only proven), so a re-run
of the same incident converges. Secrets (the old and new passwords, DSNs) stay in local
variables and files of mode 0600; they never reach a log line, a return value or XCom.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from tracktion_dr.core.errors import InvalidInput, NoUsableBackup, Refused, StepFailed
from tracktion_dr.core.incident import check_confirmation
from tracktion_dr.core.plan import Environment, Plan, Security
from tracktion_dr.evidence import forensics
from tracktion_dr.postgres import restore
from tracktion_dr.postgres.commands import Endpoint
from tracktion_dr.scenarios import SystemAccess, environment_of
from tracktion_dr.scenarios import database as database_steps
from tracktion_dr.services.checks import service_health
from tracktion_dr.services.failover import LoadBalancer

log = logging.getLogger(__name__)

APPROVE = "Approve"
CONNECT_TIMEOUT = 5
HEALTH_WAIT_SECONDS = 120
PASSWORD_BYTES = 24
# Where the first attempt of an incident notes what it found and did (no secrets).
BALANCER_NOTE = "load_balancer_before.json"
ROTATION_NOTE = "rotated.json"


def security_of(plan: Plan) -> Security:
    if plan.security is None:
        raise InvalidInput(
            "environment",
            "the plan has no `security` section (evidence bucket, retention, app roles)",
            hint="add it to the plan (see the README's Security incident section)",
        )
    return plan.security


def work_dir(plan: Plan, run: Mapping[str, Any]) -> Path:
    return Path(security_of(plan).work_dir) / restore.incident_tag(run["incident_id"])


# --- guard --------------------------------------------------------------------------------


def parse_compromised_at(value: Any, now: datetime) -> datetime:
    """ISO 8601 with a zone, not in the future."""
    text = str(value or "").strip()
    if not text:
        raise InvalidInput("compromised_at", "required: the time of the compromise (ISO 8601)")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            "compromised_at", f"{text!r} is not an ISO 8601 time (e.g. 2026-11-26T14:05:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise InvalidInput("compromised_at", f"{text!r} has no time zone", hint="add Z or +hh:mm")
    if moment > now:
        raise InvalidInput("compromised_at", f"{moment.isoformat()} is in the future")
    return moment.astimezone(UTC)


def role_facts(admin: Endpoint, roles: list[str]) -> dict[str, dict[str, Any]]:
    """``{role: {"superuser", "can_login", "replication"}}`` for the roles that exist."""
    with psycopg.connect(admin.conninfo("postgres"), connect_timeout=CONNECT_TIMEOUT) as conn:
        rows = conn.execute(
            "SELECT rolname, rolsuper, rolcanlogin, rolreplication FROM pg_catalog.pg_roles"
            " WHERE rolname = ANY(%s)",
            (roles,),
        ).fetchall()
    return {r[0]: {"superuser": r[1], "can_login": r[2], "replication": r[3]} for r in rows}


def check_roles(
    requested: Any,
    facts: Mapping[str, Mapping[str, Any]],
    protected: Mapping[str, str],
) -> list[str]:
    """The roles to block: a non-empty list of existing, ordinary roles. ``protected``
    maps role -> why it must never be blocked (DR access, replication, app roles)."""
    if not isinstance(requested, list) or not requested:
        raise InvalidInput("roles", "name at least one database role to block")
    roles = []
    for role in requested:
        if not isinstance(role, str) or not role.strip():
            raise InvalidInput("roles", f"{role!r} is not a role name")
        role = role.strip()
        if role in protected:
            raise InvalidInput("roles", f"{role!r} is {protected[role]}: it is never blocked")
        if role.startswith("pg_"):
            raise InvalidInput("roles", f"{role!r} is a PostgreSQL built-in role")
        if role not in facts:
            raise InvalidInput("roles", f"{role!r} does not exist in the cluster")
        if facts[role]["superuser"]:
            raise InvalidInput(
                "roles",
                f"{role!r} is a superuser: blocking superusers could lock DR out",
                hint="revoke SUPERUSER by hand first (ALTER ROLE ... NOSUPERUSER), then run again",
            )
        roles.append(role)
    return sorted(set(roles))


def protected_roles(plan: Plan, dr_login: str, replication_login: str | None) -> dict[str, str]:
    protected = {dr_login: "the DR connection's own role"}
    if replication_login:
        protected[replication_login] = "the replication role (the standby's stream)"
    for role in security_of(plan).app_roles:
        protected[role] = (
            "an application role: rotate_credentials replaces its password (its old one "
            "stops working) instead of taking the services down"
        )
    return protected


def check_services(environment: Environment, requested: Any, database: str) -> list[str]:
    services = requested or environment.dependents_of(database)
    if not isinstance(services, list):
        raise InvalidInput("services", f"{services!r} is not a list of service names")
    unknown = [s for s in services if s not in environment.services]
    if unknown:
        raise InvalidInput(
            "services", f"{unknown} not among the plan's services {sorted(environment.services)}"
        )
    return environment.start_order(services)


def clean_point(
    catalog: Any, database: str, compromised_at: datetime, state: restore.RestoreState
) -> dict[str, Any]:
    """The newest verified dump finished before the compromise; a re-run keeps the dump
    its first attempt restored (named in the copy's marker)."""
    pinned = state.marker
    if pinned is not None:
        return dict(pinned.backup)
    try:
        return catalog.newest_dump(database, before=compromised_at).as_dict()
    except NoUsableBackup as exc:
        raise InvalidInput(
            "compromised_at",
            f"no verified dump of {database} was finished before {compromised_at.isoformat()} "
            f"(the compromise is older than every usable backup): {exc}",
            hint="check the time of compromise; an older clean point needs dr_database_pitr",
        ) from None


def app_roles_of(plan: Plan, database: str) -> list[str]:
    return sorted(r for r, spec in security_of(plan).app_roles.items() if spec.database == database)


def check_inputs(
    plan: Plan,
    incident: dict[str, Any],
    params: Mapping[str, Any],
    admin_for: Callable[[str], Endpoint],
    s3_client: Callable[[], Any],
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Everything checked, nothing touched: the run (safe for XCom). ``admin_for(conn_id)``
    gives the cluster's DR endpoint (its password stays inside)."""
    now = now or datetime.now(UTC)
    environment = environment_of(plan, incident)
    security = security_of(plan)
    target = database_steps.database_target(environment, params.get("database"))
    admin = admin_for(target.cluster.conn_id)
    replication_conn = target.cluster.replication_conn_id
    replication_login = admin_for(replication_conn).user if replication_conn else None
    check_confirmation(
        environment.destructive_requires_confirmation,
        params.get("confirm"),
        target.name,
        incident["environment"],
    )
    compromised_at = parse_compromised_at(params.get("compromised_at"), now)
    if environment.load_balancer is None:
        raise InvalidInput("environment", "defines no load_balancer: services cannot be isolated")
    services = check_services(environment, params.get("services"), target.name)
    location = forensics.S3Location.parse(security.evidence_location)
    if not forensics.bucket_is_locked(s3_client(), location.bucket):
        raise Refused(
            f"the evidence bucket {location.bucket} has no S3 Object Lock: evidence there could "
            "be deleted by whoever holds the upload credentials",
            hint="create the bucket with Object Lock enabled (it cannot be switched on later)",
        )
    tag = restore.incident_tag(incident["incident_id"])
    name = target.spec.name
    state = database_steps.read_restore_state(admin, name, tag)
    database_steps.refuse_unsafe_state(state, incident["incident_id"])
    backup = clean_point(
        database_steps.catalog_for(environment, target.cluster), name, compromised_at, state
    )
    protected = protected_roles(plan, admin.user, replication_login)
    requested = params.get("roles")
    names = (
        [r.strip() for r in requested if isinstance(r, str)] if isinstance(requested, list) else []
    )
    roles = check_roles(requested, role_facts(admin, names), protected)
    app_roles = app_roles_of(plan, target.name)
    tier = plan.tiers[target.spec.tier]
    run = {
        **incident,
        "database": target.name,
        "database_name": name,
        "cluster": target.cluster_name,
        "compromised_at": compromised_at.isoformat(),
        "roles": roles,
        "services": services,
        "app_roles": app_roles,
        "mode": "side_by_side",
        "jobs": target.spec.restore_jobs,
        "backup": backup,
        "tag": tag,
        "restore_name": restore.restore_name(name, tag),
        "kept_as": restore.aside_name(name, tag),
        "evidence_location": security.evidence_location,
        "needs_approval": environment.destructive_requires_confirmation,
        "rto_seconds": tier.rto.total_seconds(),
        "rpo_seconds": tier.rpo.total_seconds(),
        "state": state.as_dict(),
    }
    run["actions"] = plan_of_actions(run)
    return run


def plan_of_actions(run: Mapping[str, Any]) -> list[str]:
    services = ", ".join(run["services"]) or "none"
    return [
        f"isolate: take {services} out of the load balancer; ALTER ROLE ... NOLOGIN and end "
        f"the sessions of {', '.join(run['roles'])} (DR access keeps working)",
        "preserve evidence: the application's configuration and environment file (archived "
        f"on its host), then pg_dump -Fc of {run['database_name']}, PostgreSQL log tail, the "
        f"cluster's *.conf, one SHA-256 manifest -> {run['evidence_location']}/"
        f"{run['incident_id']}/ (Object Lock)",
        f"recover the clean point {run['backup']['id']} (before {run['compromised_at']}) into "
        f"{run['restore_name']} beside the compromised database; validate it",
        ("approval by a human, then " if run["needs_approval"] else "")
        + f"swap: {run['database_name']} -> {run['kept_as']} (kept), {run['restore_name']} -> "
        f"{run['database_name']}",
        f"rotate the password of {', '.join(run['app_roles']) or 'no app role'}, write it where "
        f"the services read it, restart {services} gated on health, prove the old password "
        "refused, put the services back in the load balancer",
        "report: evidence keys and hashes, roles blocked, credentials rotated, recovery point",
    ]


# --- isolate ------------------------------------------------------------------------------


def _balancer(environment: Environment, access: SystemAccess) -> LoadBalancer:
    assert environment.load_balancer is not None  # the guard refused an environment without
    return LoadBalancer(access.url(environment.load_balancer.conn_id))


def isolate(
    plan: Plan, run: Mapping[str, Any], admin: Endpoint, access: SystemAccess
) -> dict[str, Any]:
    environment = environment_of(plan, run)
    balancer = _balancer(environment, access)
    folder = work_dir(plan, run)
    folder.mkdir(parents=True, exist_ok=True)
    note = folder / BALANCER_NOTE
    backends = {s: balancer.backend(s) for s in run["services"]}
    if not note.exists():
        # What the balancer looked like before the first attempt touched it: the servers
        # put back after the rotation (a re-run must not read its own changes as the truth).
        forensics.write_json_atomic(note, {s: b["servers"] for s, b in backends.items()})
    done: list[str] = []
    if rotation_finished(plan, run):
        # An earlier attempt already rotated and put the services back: taking them out
        # again would be a second outage for nothing.
        backends = {}
    for service, backend in backends.items():
        for server, spec in backend["servers"].items():
            if spec["status"] != "disabled" or spec["weight"] != 0:
                balancer.set_server(service, server, weight=0, status="disabled")
                done.append(f"{service}/{server} out of the load balancer")
    blocked = block_roles(admin, run["roles"])
    done += blocked
    dr_access_ok(admin)
    return {
        "detail": "; ".join(done) or "already isolated: nothing left to do",
        "status": "succeeded" if done else "skipped",
        "roles_blocked": run["roles"],
        "services_isolated": run["services"],
        "dr_access": "working",
    }


def rotation_finished(plan: Plan, run: Mapping[str, Any]) -> bool:
    """True when rotate_credentials of this incident completed (its note names every app
    role and the services went back into the balancer)."""
    note = work_dir(plan, run) / ROTATION_NOTE
    if not note.exists():
        return False
    done = json.loads(note.read_text())
    return done.get("_services_back") is True and set(run["app_roles"]) <= set(done)


def block_roles(admin: Endpoint, roles: list[str]) -> list[str]:
    """NOLOGIN (where still allowed), then end every session the roles still hold."""
    done = []
    with psycopg.connect(
        admin.conninfo("postgres"), connect_timeout=CONNECT_TIMEOUT, autocommit=True
    ) as conn:
        for role in roles:
            row = conn.execute(
                "SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)
            ).fetchone()
            if row and row[0]:
                conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
                done.append(f"{role}: NOLOGIN")
            ended = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(pid))"
                " FROM pg_catalog.pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
                (role,),
            ).fetchone()
            if ended and ended[0]:
                done.append(f"{role}: {ended[0]} session(s) ended")
    return done


def dr_access_ok(admin: Endpoint) -> None:
    try:
        with psycopg.connect(admin.conninfo("postgres"), connect_timeout=CONNECT_TIMEOUT) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        raise StepFailed(f"DR access to the cluster fails after isolation: {exc}") from None


# --- evidence -----------------------------------------------------------------------------


def application_config_files(environment: Environment) -> list[Path]:
    """The application's configuration: every file of the config paths and the environment
    file (the application host's files)."""
    files: list[Path] = []
    for folder in environment.config_paths:
        root = Path(folder)
        if root.is_dir():
            files += sorted(p for p in root.rglob("*") if p.is_file())
    if environment.config_env_file:
        files.append(Path(environment.config_env_file))
    return files


def preserve_application_files(
    plan: Plan, run: Mapping[str, Any], s3_client: Any
) -> dict[str, Any]:
    """The application host's evidence, stored locked before the database host's step
    lists it in the manifest (paths and hashes only reach XCom, never a file's content)."""
    security = security_of(plan)
    entry = forensics.store_config_archive(
        s3_client,
        security.evidence_location,
        run["incident_id"],
        application_config_files(environment_of(plan, run)),
        work_dir(plan, run) / "evidence-application",
        mode=security.lock_mode,
        retention=security.retention,
    )
    return {
        "detail": f"{len(entry['files'])} configuration file(s) stored as {entry['name']} "
        f"(sha256 {entry['sha256'][:12]}…, {entry['lock_mode']} lock)",
        "entry": entry,
    }


def evidence_sources(
    plan: Plan, run: Mapping[str, Any], state: restore.RestoreState
) -> forensics.EvidenceSources:
    """The database host's evidence: the database, its server logs, the cluster's *.conf."""
    environment = environment_of(plan, run)
    security = security_of(plan)
    cluster = environment.clusters[run["cluster"]]
    data = Path(cluster.data_directory)
    files = sorted(data.glob("*.conf")) if data.is_dir() else []
    # After a swap the compromised database lives on under its kept name.
    database = run["kept_as"] if state.phase is restore.Phase.SWAPPED else run["database_name"]
    return forensics.EvidenceSources(
        database=database,
        config_files=files,
        postgres_logs=[Path(p) for p in security.postgres_logs],
        log_tail_lines=security.log_tail_lines,
    )


def preserve_evidence(
    plan: Plan,
    run: Mapping[str, Any],
    admin: Endpoint,
    s3_client: Any,
    bindir: Path,
    application: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The database host's evidence, with ``application`` (the application host's stored
    archive, :func:`preserve_application_files`'s entry) listed in one manifest."""
    security = security_of(plan)
    location = forensics.S3Location.parse(security.evidence_location)
    incident_id = run["incident_id"]
    stored = forensics.head_object(
        s3_client, location.bucket, location.key(incident_id, forensics.MANIFEST)
    )
    bundle = work_dir(plan, run) / "evidence"
    if stored:
        result = forensics.store_evidence(
            s3_client,
            security.evidence_location,
            incident_id,
            bundle,
            {},
            mode=security.lock_mode,
            retention=security.retention,
        )
    else:
        state = restore.inspect_state(admin, run["database_name"], run["tag"])
        sources = evidence_sources(plan, run, state)
        manifest = forensics.collect_bundle(
            admin,
            sources,
            bundle,
            incident_id,
            bindir=bindir,
            stored_elsewhere=(dict(application),) if application else (),
        )
        result = forensics.store_evidence(
            s3_client,
            security.evidence_location,
            incident_id,
            bundle,
            manifest,
            mode=security.lock_mode,
            retention=security.retention,
        )
    objects = result["objects"]
    return {
        "detail": (
            f"{len(objects)} evidence object(s) under {location.url(location.key(incident_id))}/, "
            f"{security.lock_mode} lock, hashes verified"
            + ("" if result["uploaded"] else " (already stored: verified, not uploaded again)")
        ),
        "status": "succeeded" if result["uploaded"] else "skipped",
        "bucket": location.bucket,
        "objects": objects,
        "uploaded": result["uploaded"],
    }


# --- recovery and swap (dr_database_restore's steps, reused) ------------------------------


def recover_clean_point(admin: Endpoint, run: Mapping[str, Any], bindir: Path) -> dict[str, Any]:
    restored = database_steps.restore_step(admin, dict(run), bindir)
    validated = database_steps.validate_restored(admin, dict(run), bindir)
    return {
        "detail": f"{restored['detail']}; {validated['detail']}",
        "status": "skipped"
        if restored["status"] == validated["status"] == "skipped"
        else "succeeded",
        "recovery_point": run["backup"]["id"],
        "recovery_point_finished_at": run["backup"].get("finished_at"),
        "restored_into": run["restore_name"],
    }


def approval_branch(run: Mapping[str, Any]) -> str:
    """Production (an environment that demands the typed confirmation) waits for a human
    before the swap; a drill swaps on its own (dag.test cannot answer an approval)."""
    return "approve_swap" if run["needs_approval"] else "approval_not_required"


def swap(admin: Endpoint, run: Mapping[str, Any]) -> dict[str, Any]:
    return database_steps.swap_step(admin, dict(run))


# --- credentials --------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            key = key.strip().removeprefix("export ").strip()
            if sep and key and not key.startswith("#"):
                values[key] = value
    return values


def write_env_value(path: Path, name: str, value: str) -> None:
    """Set ``name=value`` in the environment file, other lines kept, atomically, 0600."""
    lines = path.read_text().splitlines() if path.is_file() else []
    kept = [
        line
        for line in lines
        if line.partition("=")[0].strip().removeprefix("export ").strip() != name
    ]
    temporary = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join([*kept, f"{name}={value}"]) + "\n")
    os.replace(temporary, path)


def safety_copy_of(env_file: Path, tag: str) -> Path:
    return env_file.with_name(f"{env_file.name}.pre_{tag}")


def dsn_with_password(old_conninfo: str, role: str, password: str, database: str) -> str:
    parts = psycopg.conninfo.conninfo_to_dict(old_conninfo)
    host, port = parts.get("host", "127.0.0.1"), parts.get("port", "5432")
    return (
        f"postgresql://{quote(role, safe='')}:{quote(password, safe='')}@{host}:{port}/"
        f"{quote(database, safe='')}?connect_timeout=2"
    )


def set_password(admin: Endpoint, role: str, password: str) -> None:
    """The verifier is computed here, so the plain password never reaches the server (or
    its log, should the statement fail)."""
    with psycopg.connect(
        admin.conninfo("postgres"), connect_timeout=CONNECT_TIMEOUT, autocommit=True
    ) as conn:
        verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
        conn.execute(
            sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(verifier.decode())
            )
        )
        conn.execute(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity"
            " WHERE usename = %s AND pid <> pg_backend_pid()",
            (role,),
        )


def login_refused(conninfo: str) -> tuple[bool, str]:
    """(refused?, why) for a connection attempt; the conninfo is never in the answer."""
    try:
        with psycopg.connect(conninfo, connect_timeout=CONNECT_TIMEOUT) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        text = str(exc)
        reason = (
            "password authentication failed"
            if "password authentication" in text
            else ("not permitted to log in" if "not permitted to log in" in text else "refused")
        )
        return True, reason
    return False, "accepted"


def wait_healthy(environment: Environment, services: list[str]) -> str:
    deadline = time.monotonic() + HEALTH_WAIT_SECONDS
    while True:
        healthy, detail = service_health(environment, services)
        if healthy:
            return detail
        if time.monotonic() > deadline:
            raise StepFailed(f"services not healthy on the new credentials: {detail}")
        time.sleep(2)


def rotate_credentials(
    plan: Plan, run: Mapping[str, Any], admin: Endpoint, access: SystemAccess
) -> dict[str, Any]:
    environment = environment_of(plan, run)
    security = security_of(plan)
    folder = work_dir(plan, run)
    note_path = folder / ROTATION_NOTE
    note = json.loads(note_path.read_text()) if note_path.exists() else {}
    if not environment.config_env_file:
        raise StepFailed(
            "the environment has no config_env_file: nowhere to write the new credential"
        )
    env_file = Path(environment.config_env_file)
    safety = safety_copy_of(env_file, run["tag"])
    done, proofs = [], {}
    for role in run["app_roles"]:
        spec = security.app_roles[role]
        database = environment.databases[spec.database].name
        # Where the old credential was read the first time (a re-run must not take the new
        # one, now in the env file, for the old): the env file's safety copy, or the
        # Airflow connection when the env file did not hold it.
        if role in note:
            old_from = note[role]["old_from"]
            before = read_env_file(safety)
        else:
            before = read_env_file(env_file)
            old_from = "env_file" if spec.env_var in before else "connection"
        if old_from == "env_file":
            old = before.get(spec.env_var)
        else:
            old = access.conninfo(spec.conn_id, database) if spec.conn_id else None
        if role not in note:
            if old is None:
                raise StepFailed(
                    f"{role}: its current credential is neither in {env_file} ({spec.env_var}) "
                    "nor in an Airflow connection: cannot prove the old password refused"
                )
            if env_file.exists() and not safety.exists():
                shutil.copy2(env_file, safety)
                os.chmod(safety, 0o600)
            password = secrets.token_urlsafe(PASSWORD_BYTES)
            set_password(admin, role, password)
            write_env_value(
                env_file, spec.env_var, dsn_with_password(old, role, password, database)
            )
            del password
            note[role] = {
                "rotated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "old_from": old_from,
            }
            forensics.write_json_atomic(note_path, note)
            done.append(f"{role}: new password set and written to {env_file} ({spec.env_var})")
        new = read_env_file(env_file).get(spec.env_var)
        new_refused, why_new = login_refused(new) if new else (True, "missing")
        if new_refused:
            raise StepFailed(f"{role}: the new credential in {env_file} is refused ({why_new})")
        old_refused, why_old = login_refused(old) if old else (False, "unknown")
        if not old_refused:
            raise StepFailed(f"{role}: the OLD password is still accepted")
        proofs[role] = {"old_password": f"refused ({why_old})", "new_password": "accepted"}
        if spec.connection_secret and access.store_connection_secret:
            # Every run, not only the rotating one: a run killed between the env file and
            # the secrets backend leaves Airflow's connection on the old password.
            stored = access.store_connection_secret(
                spec.secrets_conn_id, spec.connection_secret, new
            )
            proofs[role]["airflow_connection"] = f"{spec.connection_secret} {stored}"
    healthy, health = service_health(environment, run["services"])
    if done or not healthy:
        # A service reads its credential at start: restarted after a rotation (or when an
        # earlier attempt left one down), not on a re-run that finds them healthy.
        for name in run["services"]:
            spec = environment.services[name]
            access.controller(environment.controllers[spec.controller]).restart(spec.unit or name)
        health = wait_healthy(environment, run["services"])
        done.append(f"restarted {', '.join(run['services'])}: {health}")
    done += back_in_balancer(plan, run, access)
    note["_services_back"] = True
    forensics.write_json_atomic(note_path, note)
    return {
        "detail": "; ".join(done),
        "credentials_rotated": sorted(r for r in note if not r.startswith("_")),
        "proofs": proofs,
        "config_env_file": str(env_file),
        "safety_copy": str(safety) if safety.exists() else None,
    }


def back_in_balancer(plan: Plan, run: Mapping[str, Any], access: SystemAccess) -> list[str]:
    """The servers isolate took out, back as they were before the incident."""
    note = work_dir(plan, run) / BALANCER_NOTE
    if not note.exists():
        return []
    before = json.loads(note.read_text())
    balancer = _balancer(environment_of(plan, run), access)
    done = []
    for service, servers in before.items():
        current = balancer.backend(service)["servers"]
        for server, spec in servers.items():
            now = current.get(server, {})
            if (now.get("status"), now.get("weight")) != (spec["status"], spec["weight"]):
                balancer.set_server(service, server, weight=spec["weight"], status=spec["status"])
                done.append(f"{service}/{server} back in the load balancer")
    return done


# --- report -------------------------------------------------------------------------------


def report_fields(run: Mapping[str, Any], results: Mapping[str, Any]) -> dict[str, Any]:
    """The post-incident review's facts (no secrets: role names, keys, hashes)."""
    evidence = results.get("preserve_evidence") or {}
    isolated = results.get("isolate") or {}
    recovered = results.get("recover_clean_point") or {}
    swapped = results.get("swap") or {}
    rotated = results.get("rotate_credentials") or {}
    return {
        "rto_target_seconds": run["rto_seconds"],
        "rpo_target_seconds": run["rpo_seconds"],
        "backup_used": run["backup"]["id"],
        "details": {
            "compromised_at": run["compromised_at"],
            "database": run["database"],
            "evidence": [
                {k: o.get(k) for k in ("key", "sha256", "version_id", "lock_mode", "retain_until")}
                for o in evidence.get("objects", [])
            ],
            "evidence_bucket": evidence.get("bucket"),
            "roles_blocked": isolated.get("roles_blocked"),
            "services_isolated": isolated.get("services_isolated"),
            "recovery_point": recovered.get("recovery_point") or run["backup"]["id"],
            "recovery_point_finished_at": run["backup"].get("finished_at"),
            "compromised_database_kept_as": swapped.get("kept_as"),
            "credentials_rotated": rotated.get("credentials_rotated"),
            "old_credentials": rotated.get("proofs"),
        },
    }
