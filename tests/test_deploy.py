"""deploy/: the compose file stays in step with the product (Docker cannot run here).

Checked, not run: every PACS_ variable it and example.env set is one the settings classes
read, and together they pass the production checks; every command is one the CLI has, with
options it takes; its services have the shape of the scale-out test
(tests/faults/test_scale_out.py: separate PACS_HOMEs sharing only the index, the bucket and
the secrets tests.faults.site.SHARED names; the schema migrated once first); every node reads
the same token secret and webhook key; workers reserve a GPU; PostgreSQL has room for every
pool.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from inference.settings import InferenceSettings
from pacs.cli import app
from pacs.settings import PacsSettings
from tests.faults.site import SHARED
from viewer_api.settings import ApiSettings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SETTINGS = (PacsSettings, ApiSettings, InferenceSettings)
# Connections a node opens beyond its pools (README "PostgreSQL connections"): 2 + 2 each for
# the sweeper and the webhook dispatcher.
NODE_EXTRA_CONNECTIONS = 8
# Kept free for `pacs` commands and superuser_reserved_connections.
ROOM = 10


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _example_env() -> dict[str, str]:
    found = {}
    for line in (DEPLOY / "example.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            found[name.strip()] = value.strip()
    return found


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:?message} and ${NAME:-default}, from *env*."""

    def one(match: re.Match[str]) -> str:
        name, _, rest = match.group(1).partition(":")
        if name in env:
            return env[name]
        assert rest.startswith("-"), f"${{{name}}} is not in example.env"
        return rest[1:]

    return re.sub(r"\$\{([^}]+)\}", one, value)


def _pacs_services(compose: dict[str, Any], command: str) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image", "").startswith("pacs-ai") and service["command"][0] == command
    }


def _environment(service: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    """What a pacs container's process sees: the env_file (.env, from example.env), then the
    service's environment over it, interpolated."""
    assert service["env_file"] == [".env"]
    own = {k: _interpolate(str(v), env) for k, v in service.get("environment", {}).items()}
    return {**env, **own}


def _read_by_code() -> set[str]:
    names = set()
    for settings in SETTINGS:
        prefix = settings.model_config.get("env_prefix", "")
        names |= {f"{prefix}{field}".upper() for field in settings.model_fields}
    return names


def test_every_pacs_variable_set_is_read_by_the_code() -> None:
    compose, env = _compose(), _example_env()
    set_here = {name for name in env if name.startswith("PACS_")}
    for service in compose["services"].values():
        set_here |= {n for n in service.get("environment", {}) if n.startswith("PACS_")}
    unknown = set_here - _read_by_code()
    assert not unknown, f"deploy/ sets PACS_ variables no settings class reads: {unknown}"
    # And the settings the operator must decide are all there.
    assert {
        "PACS_ENVIRONMENT",
        "PACS_PUBLIC_URL",
        "PACS_DB_POOL_SIZE",
        "PACS_DB_MAX_OVERFLOW",
        "PACS_DIMSE_ALLOW_UNKNOWN",
        "PACS_LOG_FORMAT",
    } <= set_here


@pytest.mark.parametrize("role", ["serve", "worker", "db"])
def test_each_service_environment_passes_the_settings_checks(
    role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _example_env()
    services = _pacs_services(_compose(), role)
    assert services
    for service in services.values():
        for name in [n for n in os.environ if n.startswith("PACS_")]:
            monkeypatch.delenv(name)
        for name, value in _environment(service, env).items():
            monkeypatch.setenv(name, value)
        pacs = PacsSettings()  # production: PostgreSQL, S3 keys, no unknown AEs
        api = ApiSettings()  # production: embedded tokens allowed or OIDC, https public URL
        InferenceSettings()
        assert pacs.environment == api.environment == "production"
        assert pacs.resolved_database_url.startswith("postgresql+psycopg://")
        assert pacs.resolved_storage_url.startswith("s3://")


def test_every_command_is_one_the_cli_has() -> None:
    group = typer.main.get_command(app)
    for name, service in _compose()["services"].items():
        if not service.get("image", "").startswith("pacs-ai"):
            continue
        command: Any = group
        args = list(service["command"])
        while hasattr(command, "commands") and args and not args[0].startswith("-"):
            found = command.commands.get(args.pop(0))
            assert found is not None, f"{name}: `pacs {' '.join(service['command'])}` unknown"
            command = found
        assert not hasattr(command, "commands"), f"{name}: a group, not a command"
        command.make_context("pacs", args)  # raises on an option the command does not take


def _home_volume(service: dict[str, Any], home: str) -> str:
    [source] = [v.split(":")[0] for v in service["volumes"] if v.split(":")[1] == home]
    return str(source)


def test_the_services_have_the_shape_of_the_scale_out_test() -> None:
    compose, env = _compose(), _example_env()
    nodes = _pacs_services(compose, "serve")
    workers = _pacs_services(compose, "worker")
    [migrate] = _pacs_services(compose, "db").values()
    assert len(nodes) >= 2 and len(workers) >= 2  # as the scale-out test: two of each
    assert {"postgres", "minio", "api"} <= set(compose["services"])
    assert migrate["command"] == ["db", "upgrade"]  # once, before the nodes (as the test)

    everyone = {**nodes, **workers}
    environments = {name: _environment(s, env) for name, s in everyone.items()}
    for name in SHARED:  # what the scale-out test's nodes and workers share
        values = {e.get(name) for e in environments.values()}
        assert len(values) == 1 and None not in values, f"{name} differs or is missing: {values}"
    homes = {_home_volume(s, environments[n]["PACS_HOME"]) for n, s in everyone.items()}
    assert len(homes) == len(everyone), "each node and worker needs its own PACS_HOME volume"
    for service in everyone.values():
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


def test_every_node_shares_the_token_secret_and_the_webhook_key() -> None:
    compose, env = _compose(), _example_env()
    for name, service in _pacs_services(compose, "serve").items():
        environment = _environment(service, env)
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        if "PACS_OIDC_ISSUER" not in environment:
            assert mounts[environment["PACS_JWT_SECRET_FILE"]] == "./secrets/jwt-secret", name
        # Webhook secrets are sealed with one key every node reads (pacs.secretbox).
        assert mounts[environment["PACS_SECRET_KEY_FILE"]] == "./secrets/webhook-key", name
        assert environment["PACS_WORKERS"] == "0" and environment["PACS_HOST"] == "0.0.0.0"


def test_workers_reserve_a_gpu() -> None:
    compose, env = _compose(), _example_env()
    for name, service in _pacs_services(compose, "worker").items():
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert "gpu" in device["capabilities"], name
        assert _environment(service, env)["PACS_DEVICE"] == "cuda"


def test_postgres_has_room_for_every_pool() -> None:
    """README "PostgreSQL connections": a node without in-process workers opens
    (PACS_RECEIVERS + PACS_HTTP_PROCESSES) pools and 8 connections more, a worker one pool."""
    compose, env = _compose(), _example_env()
    needed = 0
    for role in ("serve", "worker"):
        for service in _pacs_services(compose, role).values():
            settings = _environment(service, env)
            pool = int(settings["PACS_DB_POOL_SIZE"]) + int(settings["PACS_DB_MAX_OVERFLOW"])
            if role == "serve":
                pools = (
                    int(settings["PACS_RECEIVERS"])
                    + int(settings.get("PACS_HTTP_PROCESSES", "1"))
                    + (1 if int(settings["PACS_WORKERS"]) else 0)
                )
                needed += pools * pool + NODE_EXTRA_CONNECTIONS
            else:
                needed += pool
    command = compose["services"]["postgres"]["command"]
    [limit] = [int(a.split("=")[1]) for a in command if a.startswith("max_connections=")]
    assert needed + ROOM <= limit, f"{needed} connections + {ROOM} spare > {limit}"
