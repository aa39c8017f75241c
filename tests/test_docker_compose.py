"""Consistency of docker-compose.yaml, Dockerfile and .dockerignore (Docker itself cannot run in CI).

Checks what would otherwise only fail at `docker compose up`: service commands our CLI rejects, connection URLs that
point at the wrong service or port, mounts of folders that don't exist, files the image needs but never copies.
Compose variables are resolved with their defaults (``${VAR:-default}``), ignoring the caller's environment, so the
result doesn't depend on who runs the tests.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
import yaml

from invoiceflow.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
}
REQUIRED_SERVICES = AIRFLOW_SERVICES | {"postgres", "warehouse", "redis", "leapocr-server", "erp-sandbox"}
#: Bind-mount sources that are not in git on purpose, each with the airflow-init line that creates it.
CREATED_ON_PURPOSE = {"inbox": "mkdir -p /sources/inbox"}
#: Paths the Dockerfile must copy (README.md: the build backend reads it as the package readme).
IMAGE_PATHS = {"pyproject.toml", "uv.lock", "README.md", "plugins", "include", "sql"}

_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose interpolation with an empty environment: ``${X:-d}`` → ``d``, ``${X}`` → ``""``, ``$$`` → ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("op") and match.group("op").endswith("?"):
            raise AssertionError(f"{match.group(0)} requires a variable that CI doesn't set")
        return match.group("default") or ""

    return _VAR.sub(replace, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: interpolate(str(value)) for key, value in raw.items()}


def command_argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    argv = shlex.split(command) if isinstance(command, str) else [str(part) for part in command]
    return [interpolate(part) for part in argv]


def parse_cli(argv: list[str]) -> Any:
    assert argv[0] == "invoiceflow", f"not an invoiceflow command: {argv}"
    return build_parser().parse_args(argv[1:])


def init_script(services: dict[str, dict[str, Any]]) -> str:
    init = services["airflow-init"]
    assert init["entrypoint"] == "/bin/bash"
    assert command_argv(init)[0] == "-c"
    return command_argv(init)[1]


def connection(services: dict[str, dict[str, Any]], conn_id: str) -> Any:
    """The Airflow connection a worker sees, parsed by Airflow itself (JSON or URI form)."""
    from airflow.models.connection import Connection

    value = env(services["airflow-worker"])[f"AIRFLOW_CONN_{conn_id.upper()}"]
    if value.lstrip().startswith("{"):
        return Connection.from_json(value, conn_id=conn_id)
    return Connection(conn_id=conn_id, uri=value)


def volumes(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each short-syntax volume."""
    pairs = []
    for spec in service.get("volumes", []):
        assert isinstance(spec, str), f"long-syntax volume not handled by this test: {spec}"
        source, target, *_mode = spec.split(":")
        pairs.append((source, target))
    return pairs


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in raw.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def dockerfile_copies() -> dict[str, str]:
    """Build-context path → absolute path in the image, for every COPY from the context."""
    copies, workdir = {}, PurePosixPath("/")
    for instruction, args in dockerfile_instructions():
        if instruction == "WORKDIR":
            workdir = workdir / args.strip()
        elif instruction in {"COPY", "ADD"}:
            parts = shlex.split(args)
            if any(p.startswith("--from") for p in parts):
                continue
            *sources, dest = [p for p in parts if not p.startswith("--")]
            target = workdir / dest
            for source in sources:
                name = source.rstrip("/")
                # Docker copies a directory's contents into dest, and a file into dest/ when dest is a folder.
                into_folder = (REPO / name).is_file() and (len(sources) > 1 or dest.endswith("/"))
                copies[name] = str(target / PurePosixPath(name).name if into_folder else target)
    return copies


def dockerfile_env() -> dict[str, str]:
    values = {}
    for instruction, args in dockerfile_instructions():
        if instruction == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                values[key] = value
    return values


# ------------------------------------------------------------------------------------------------ services


def test_interpolation_helper_uses_defaults() -> None:
    assert interpolate("${A:-x}/${B-y}/${C}/$${HOSTNAME}") == "x/y//${HOSTNAME}"


def test_every_required_service_is_defined(services: dict[str, dict[str, Any]]) -> None:
    assert REQUIRED_SERVICES - services.keys() == set()


def test_images_and_build(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["image"] == "postgres:16"
    assert services["warehouse"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7.2-bookworm"
    for name in AIRFLOW_SERVICES | {"leapocr-server", "erp-sandbox"}:
        assert services[name]["build"] == ".", name
        assert services[name]["image"] == services["airflow-worker"]["image"], name


def test_airflow_commands(services: dict[str, dict[str, Any]]) -> None:
    assert services["airflow-apiserver"]["command"] == "api-server"
    assert services["airflow-scheduler"]["command"] == "scheduler"
    assert services["airflow-dag-processor"]["command"] == "dag-processor"
    assert services["airflow-triggerer"]["command"] == "triggerer"
    assert services["airflow-worker"]["command"] == "celery worker"
    assert "8080:8080" in services["airflow-apiserver"]["ports"]
    health = services["airflow-apiserver"]["healthcheck"]["test"]
    assert "http://localhost:8080/api/v2/monitor/health" in health


def test_depends_on_names_defined_services(services: dict[str, dict[str, Any]]) -> None:
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services, f"{name} depends on undefined service {dependency}"
            assert condition in conditions, f"{name} → {dependency}: {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health"


def test_triggerer_has_a_job_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    test = services["airflow-triggerer"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    # `$$` is compose's escape: the container's shell, not compose, expands HOSTNAME.
    assert test[1] == 'airflow jobs check --job-type TriggererJob --hostname "$${HOSTNAME}"'


# ------------------------------------------------------------------------------------------------ executor


def test_celery_executor_with_redis_broker(services: dict[str, dict[str, Any]]) -> None:
    for name in AIRFLOW_SERVICES:
        variables = env(services[name])
        assert variables["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        broker = urlsplit(variables["AIRFLOW__CELERY__BROKER_URL"])
        assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379), name
        assert {"redis", "postgres"} <= depends_on(services[name]).keys(), name


def test_airflow_components_share_api_url_secret_and_settings(services: dict[str, dict[str, Any]]) -> None:
    seen = {name: env(services[name]) for name in AIRFLOW_SERVICES}
    for name, variables in seen.items():
        assert (
            variables["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        )
        assert variables["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false", name
        assert variables["AIRFLOW__API_AUTH__JWT_SECRET"], name
        metadata = sa.make_url(variables["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert metadata.host == "postgres", name
    assert len({v["AIRFLOW__API_AUTH__JWT_SECRET"] for v in seen.values()}) == 1


# ------------------------------------------------------------------------------------------------ our servers


@pytest.mark.parametrize("name", ["leapocr-server", "erp-sandbox"])
def test_servers_bypass_the_airflow_entrypoint(services: dict[str, dict[str, Any]], name: str) -> None:
    # The image's /entrypoint turns any command other than bash/python into `airflow <command>`.
    assert services[name]["entrypoint"] == ["/usr/bin/dumb-init", "--"]


def test_leapocr_server_command_and_key(services: dict[str, dict[str, Any]]) -> None:
    service = services["leapocr-server"]
    args = parse_cli(command_argv(service))
    assert (args.command, args.host, args.port) == ("leapocr-server", "0.0.0.0", 8484)
    assert args.api_key is None, "the key must come from LEAPOCR_API_KEY, not argv"
    assert env(service)["LEAPOCR_API_KEY"] == "local-dev-key"
    assert service["environment"]["LEAPOCR_API_KEY"] == "${LEAPOCR_API_KEY:-local-dev-key}"
    assert f"http://localhost:{args.port}/health" in service["healthcheck"]["test"]


def test_erp_sandbox_command_and_volume(services: dict[str, dict[str, Any]], compose: dict[str, Any]) -> None:
    service = services["erp-sandbox"]
    args = parse_cli(command_argv(service))
    assert (args.command, args.host, args.port) == ("erp-sandbox", "0.0.0.0", 8765)
    assert str(args.db) == "/data/erp_sandbox.db"
    [(source, target)] = volumes(service)
    assert target == str(PurePosixPath(args.db).parent)
    assert not is_bind(source) and source in compose["volumes"]
    assert env(service)[args.token_env] == "local-dev-token"
    assert f"http://localhost:{args.port}/health" in service["healthcheck"]["test"]


def test_leapocr_connection_points_at_the_server(services: dict[str, dict[str, Any]]) -> None:
    from invoiceflow.leapocr.hooks import LeapOcrHook

    conn = connection(services, "leapocr_default")
    server = parse_cli(command_argv(services["leapocr-server"]))
    base = urlsplit(LeapOcrHook.base_url(conn))
    assert conn.conn_type == "leapocr"
    assert (base.scheme, base.hostname, base.port, base.path) == (
        "http",
        "leapocr-server",
        server.port,
        "/api/v1",
    )
    assert conn.password == env(services["leapocr-server"])["LEAPOCR_API_KEY"]


def test_erp_connection_points_at_the_sandbox(services: dict[str, dict[str, Any]]) -> None:
    conn = connection(services, "erp_default")
    sandbox = parse_cli(command_argv(services["erp-sandbox"]))
    base = urlsplit(conn.host)
    assert conn.conn_type == "http"
    assert (base.scheme, base.hostname, base.port) == ("http", "erp-sandbox", sandbox.port)
    assert conn.password == env(services["erp-sandbox"])[sandbox.token_env]


def test_warehouse_connection_matches_the_warehouse_service(services: dict[str, dict[str, Any]]) -> None:
    from invoiceflow.warehouse import url_from_airflow_connection

    conn = connection(services, "warehouse_default")
    assert conn.conn_type == "postgres"
    # The URL the DAG tasks will actually open (invoiceflow.warehouse.get_engine).
    url = sa.make_url(url_from_airflow_connection(conn))
    pg = env(services["warehouse"])
    assert (url.host, url.port) == ("warehouse", 5432)
    assert (url.username, url.password, url.database) == (
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        pg["POSTGRES_DB"],
    )
    assert url.database != env(services["postgres"])["POSTGRES_DB"], "warehouse must not be the metadata DB"


def test_init_upgrades_the_warehouse_schema(services: dict[str, dict[str, Any]]) -> None:
    lines = [line.strip() for line in init_script(services).splitlines()]
    [upgrade] = [line for line in lines if line.startswith("invoiceflow db upgrade")]
    args = parse_cli(shlex.split(upgrade))
    assert (args.command, args.db_command) == ("db", "upgrade")
    url = sa.make_url(args.url)
    pg = env(services["warehouse"])
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port, url.username, url.password, url.database) == (
        "warehouse",
        5432,
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        pg["POSTGRES_DB"],
    )
    assert depends_on(services["airflow-init"])["warehouse"] == "service_healthy"
    init_env = env(services["airflow-init"])
    assert init_env["_AIRFLOW_DB_MIGRATE"] == "true"
    assert init_env["_AIRFLOW_WWW_USER_CREATE"] == "true"
    assert lines[-1] == "exec /entrypoint airflow version"


# ------------------------------------------------------------------------------------------------ mounts


def test_bind_mount_sources_exist_or_are_created_by_init(services: dict[str, dict[str, Any]]) -> None:
    script = init_script(services)
    checked = 0
    for name, service in services.items():
        for source, target in volumes(service):
            if not is_bind(source):
                continue
            checked += 1
            relative = Path(source).relative_to(".") if not source.startswith("/") else None
            assert relative is not None, f"{name}: absolute host path {source} is not portable"
            if str(relative) in CREATED_ON_PURPOSE:
                assert CREATED_ON_PURPOSE[str(relative)] in script, f"{name}: nothing creates {source}"
            else:
                assert (REPO / relative).exists(), f"{name}: {source} → {target} does not exist in the repo"
    assert checked > 0
    assert (".", "/sources") in volumes(services["airflow-init"])


def test_named_volumes_are_declared(services: dict[str, dict[str, Any]], compose: dict[str, Any]) -> None:
    for name, service in services.items():
        for source, _target in volumes(service):
            if not is_bind(source):
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"


def test_dags_and_inbox_are_mounted_where_airflow_looks(services: dict[str, dict[str, Any]]) -> None:
    inbox = urlsplit(env(services["airflow-worker"])["INVOICEFLOW_INBOX"])
    assert inbox.scheme == "file"
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        mounts = dict(volumes(services[name]))
        assert mounts.get("./dags") == "/opt/airflow/dags", name
        assert mounts.get("./inbox") == inbox.path, name
    assert "./plugins" not in dict(volumes(services["airflow-worker"])), "plugins/ is installed, not mounted"


# ------------------------------------------------------------------------------------------------ image


def test_dockerfile_base_image() -> None:
    froms = [args for instruction, args in dockerfile_instructions() if instruction == "FROM"]
    assert froms == ["apache/airflow:3.3.2-python3.11"]


def test_dockerfile_copies_every_path_the_image_needs() -> None:
    copies = dockerfile_copies()
    assert IMAGE_PATHS - copies.keys() == set()
    for source in copies:
        assert (REPO / source).exists(), f"COPY {source}: missing from the build context"


def test_dockerignore_keeps_the_copied_paths() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".venv" in patterns and ".git" in patterns
    for source in dockerfile_copies():
        excluded = [p for p in patterns if not p.startswith("!") and fnmatch.fnmatch(source, p.rstrip("/"))]
        assert not excluded, f"{source} is copied but .dockerignore excludes it ({excluded})"


def test_invoiceflow_dirs_point_at_the_copied_files() -> None:
    copies, variables = dockerfile_copies(), dockerfile_env()
    assert variables["INVOICEFLOW_SCHEMA_DIR"] == f"{copies['include']}/schemas"
    assert variables["INVOICEFLOW_SQL_DIR"] == copies["sql"]
    assert (REPO / "include" / "schemas" / "invoice.json").is_file()
    assert (REPO / "sql" / "migrations").is_dir()


def test_image_installs_the_locked_celery_extra() -> None:
    runs = " ".join(args for instruction, args in dockerfile_instructions() if instruction == "RUN")
    assert re.search(r"uv export [^&]*--frozen[^&]*--extra celery", runs), runs
    assert "uv pip install --no-cache --no-deps -r" in runs, "leapocr's pydantic<2 pin needs --no-deps"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("apache-airflow-providers-celery") for req in extras["celery"])


def test_connection_json_is_valid(services: dict[str, dict[str, Any]]) -> None:
    for key in ("AIRFLOW_CONN_LEAPOCR_DEFAULT", "AIRFLOW_CONN_ERP_DEFAULT"):
        assert isinstance(json.loads(env(services["airflow-worker"])[key]), dict)
