# One image for every Airflow service and worker of the Tracktion DR deployment
# (docker-compose.yaml), and for the stand-in hosts of its `topology` profile.
#
#   make deploy-image        builds the base image when it is missing, then this image
#
# What is in it: Python 3.11, the pinned requirements (requirements.txt + constraints.txt) with
# the CeleryExecutor's extras (deploy/requirements-celery.txt), this project (DAGs, plugins,
# the library and the sandbox package), the PostgreSQL 15 server and client tools a DB-host
# worker runs (pg_ctl, pg_basebackup, pg_verifybackup, pg_waldump, pg_amcheck, ...), zstd, tar,
# Redis (the Celery broker's service runs this image too: no registry image is needed) and
# tini as PID 1. What is not in it: any secret or site configuration. Those come at run time
# from the env file (deploy/airflow.env, made by scripts/deploy-env.sh) or a secrets backend.
#
# BASE_IMAGE is built from Debian packages by scripts/build-base-image.sh when no registry
# can be reached. The build needs the package registries (apt, PyPI): build with
# `--network host`. EXTRA_CA_FILE (a path in the build context, may be empty) is a CA bundle
# pip must trust on networks that intercept TLS; it is used by the build stage only and never
# reaches the final image.
ARG BASE_IMAGE=debian:bookworm-slim

# --------------------------------------------------------------------------- the OS layer
FROM ${BASE_IMAGE} AS os
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8
# Debian's postgresql-common creates and starts a "main" cluster when the server package is
# installed; a DB host here gets its clusters from the DR tooling, so none is made at build.
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && printf 'create_main_cluster = false\n' > /etc/postgresql-common/createcluster.d/no-main-cluster.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.11 python3.11-venv \
      postgresql-15 postgresql-client-15 \
      redis-server \
      tini ca-certificates curl zstd tar procps util-linux netbase \
 && rm -rf /var/lib/apt/lists/* \
 && for tool in pg_ctl pg_basebackup pg_verifybackup pg_waldump pg_amcheck initdb postgres; do \
      test -x /usr/lib/postgresql/15/bin/$tool || { echo "missing $tool" >&2; exit 1; }; \
    done

# --------------------------------------------------------------------------- the Python venv
FROM os AS venv
ARG EXTRA_CA_FILE=.build/extra-ca.crt
COPY ${EXTRA_CA_FILE} /tmp/extra-ca.crt
COPY requirements.txt constraints.txt /tmp/req/
COPY deploy/requirements-celery.txt deploy/constraints-overrides.txt /tmp/req/deploy/
# The lock with the image's overrides (deploy/constraints-overrides.txt says why) replacing
# the same packages' pins. pip trusts the system bundle plus the extra CA (if any) for this
# stage only. pip and setuptools are pinned: Debian's pip 23.0 cannot resolve pinned extras,
# and its setuptools 66 cannot make the project's editable install (no bdist_wheel).
RUN awk -F'==' 'FNR == NR { if ($0 !~ /^#/ && NF == 2) over[tolower($1)] = $0; next } \
                { name = tolower($1) } name in over { print over[name]; next } { print }' \
      /tmp/req/deploy/constraints-overrides.txt /tmp/req/constraints.txt > /tmp/req/constraints-image.txt \
 && cat /etc/ssl/certs/ca-certificates.crt /tmp/extra-ca.crt > /tmp/pip-ca.crt \
 && python3.11 -m venv /opt/venv \
 && PIP_CERT=/tmp/pip-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
      /opt/venv/bin/pip install -q pip==26.3 setuptools==80.9.0 \
 && PIP_CERT=/tmp/pip-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
      /opt/venv/bin/pip install -q \
        -r /tmp/req/requirements.txt -r /tmp/req/deploy/requirements-celery.txt \
        -c /tmp/req/constraints-image.txt \
 && rm -f /tmp/pip-ca.crt /tmp/extra-ca.crt \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# --------------------------------------------------------------------------- the image
FROM os
ARG AIRFLOW_UID=50000
ENV PATH=/opt/venv/bin:/usr/lib/postgresql/15/bin:$PATH \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/tracktion-dr/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/tracktion-dr/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    PYTHONUNBUFFERED=1
# The airflow user (uid 50000, group root) as in Airflow's own images, so volumes written by
# one service are readable by the others. /srv/tracktion: the `topology` profile's stand-in
# state (the sandbox's layout; reports and records of tasks on the default worker).
RUN useradd --uid "${AIRFLOW_UID}" --gid 0 --home-dir /opt/airflow --create-home \
      --shell /bin/bash airflow \
 && install -d -o airflow -g 0 -m 0775 /opt/airflow/logs /opt/airflow/auth \
 && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
 && install -d -o airflow -g 0 -m 0775 /srv/tracktion
COPY --from=venv /opt/venv /opt/venv
# The library reads its plan files (include/config) and the DAG folder relative to its own
# source, so the project is installed in place (editable) with the repository's layout
# rather than as a wheel, which would leave both behind.
WORKDIR /opt/tracktion-dr
COPY pyproject.toml requirements.txt constraints.txt ./
COPY include ./include
COPY sandbox ./sandbox
COPY plugins ./plugins
COPY dags ./dags
COPY deploy ./deploy
RUN /opt/venv/bin/pip install -q --no-deps --no-index --no-build-isolation -e . \
 && python -m compileall -q include sandbox plugins dags >/dev/null \
 && chmod 0755 deploy/*.sh \
 && python -c 'import airflow.providers.celery, tracktion_dr.core.plan, tracktion_sandbox.pg'
WORKDIR /opt/airflow
USER airflow
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["airflow", "version"]
