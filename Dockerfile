# syntax=docker/dockerfile:1
# invoiceflow image: the official Airflow 3.3.2 image plus our package and its locked dependencies.
# Used by every service in docker-compose.yaml (Airflow components, the offline LeapOCR server, the ERP sandbox).
FROM apache/airflow:3.3.2-python3.11

# uv, pinned like the Makefile. A static binary copied from the uv image: nothing else in the base image changes.
COPY --from=ghcr.io/astral-sh/uv:0.13.8 /uv /usr/local/bin/uv

USER root
# /data holds the ERP sandbox ledger; compose mounts a named volume there, and a fresh named volume takes over the
# owner of the image's folder, so the airflow user (uid 50000, group 0) can write to it.
RUN mkdir -p /data /opt/invoiceflow \
    && chown -R airflow:0 /data /opt/invoiceflow \
    && chmod -R g+rwX /data /opt/invoiceflow
USER airflow

WORKDIR /opt/invoiceflow

# 1) Third-party dependencies, exactly as locked (own layer: code changes don't reinstall them).
#    `--no-deps` on the exported lock is required: leapocr 2.0.1 declares pydantic<2, which a resolver rejects next
#    to Airflow; uv.lock already carries the `pydantic>=2.11` override (see pyproject [tool.uv]).
#    `--extra celery` because compose runs the CeleryExecutor; `--extra s3` so INVOICEFLOW_INBOX may be s3://.
#    uv installs into the image's VIRTUAL_ENV (/home/airflow/.local), where Airflow itself lives.
COPY --chown=airflow:0 pyproject.toml uv.lock README.md ./
RUN uv export --frozen --no-dev --extra celery --extra s3 --no-emit-project --no-hashes -o /tmp/requirements.txt \
    && uv pip install --no-cache --no-deps -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 2) The project itself (non-editable). README.md is needed by the build backend (pyproject `readme`).
#    include/ and sql/ are data the package reads at run time: the INVOICEFLOW_* variables below point at them,
#    because a non-editable install cannot find them relative to its own files.
COPY --chown=airflow:0 plugins/ plugins/
COPY --chown=airflow:0 include/ include/
COPY --chown=airflow:0 sql/ sql/
RUN uv pip install --no-cache --no-deps .

# INVOICEFLOW_HOME: state of the embedded defaults (unused when connections are set, as in compose).
ENV INVOICEFLOW_SCHEMA_DIR=/opt/invoiceflow/include/schemas \
    INVOICEFLOW_SQL_DIR=/opt/invoiceflow/sql \
    INVOICEFLOW_HOME=/opt/airflow/invoiceflow

# Fail the build, not the first DAG run, if the install is incomplete.
RUN python -c "import invoiceflow.cli, leapocr, celery, airflow.providers.celery, airflow.providers.postgres, airflow.providers.fab" \
    && invoiceflow --help > /dev/null \
    && test -f "${INVOICEFLOW_SCHEMA_DIR}/invoice.json" \
    && test -d "${INVOICEFLOW_SQL_DIR}/migrations"

WORKDIR /opt/airflow
