"""The Docker files, checked statically (no Docker engine runs on our machines): they parse,
every path they copy exists, the images install the project by the README's install step, and
the compose stack is closed by default (ports on 127.0.0.1, every credential from docker/.env)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [tuple(line.strip().split(None, 1)) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_existing_paths_and_installs_like_the_readme(dockerfile):
    steps = instructions(dockerfile)
    assert steps[0][0] == "FROM" and all(op.isupper() for op, _ in steps)
    copied = [src for op, args in steps if op == "COPY" for src in args.split()[:-1]]
    assert copied and all((ROOT / src).exists() for src in copied), [s for s in copied if not (ROOT / s).exists()]
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert "make install" in runs
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: install$", makefile, re.M) and re.search(r"^test: install\b", makefile, re.M)
    assert "make demo" in (ROOT / "README.md").read_text().splitlines()[3]  # the README's install-and-run command
    # everything the package needs at run time is in the image
    for package in ("semdpo_core", "tasks", "flows", "deployments"):
        assert package in copied


def test_compose_stack_is_complete_and_consistent():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "minio", "cpu-worker", "gpu-worker", "deploy"} <= set(services)
    assert "postgresql+asyncpg" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    for name in ("prefect-server", "gpu-worker"):
        dockerfile = ROOT / "docker" / Path(services[name]["build"]["dockerfile"]).name
        assert dockerfile.exists() and services[name]["build"]["context"] == ".."
    pools = {d["work_pool"]["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    workers = {services[s]["command"][-1] for s in ("cpu-worker", "gpu-worker")}
    assert workers == pools  # a worker for every pool the deployments use
    assert services["gpu-worker"]["environment"]["SEMDPO_STORE"].startswith("s3://")
    assert services["gpu-worker"]["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"


# The stack is closed by default (issue 13): ports on 127.0.0.1, credentials only from docker/.env.

COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
MAKE_ENV = ROOT / "docker" / "make_env.py"
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}, and $$ (a literal $)
REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?])([^}]*))?\}")
REQUIRED_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]+\}")
CREDENTIAL_KEY = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|AUTH|TOKEN|MINIO_(ROOT_)?USER")


class MissingVariable(Exception):
    """A ${VAR:?message} compose would refuse to start on."""


def interpolate(value: str, env: dict[str, str]) -> str:
    """`value` with compose's variable substitution applied, from `env` only."""
    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, colon, op, arg = match.groups()
        present = name in env and (env[name] != "" or not colon)
        if present:
            return env[name]
        if op == "?":
            raise MissingVariable(name)
        return arg if op == "-" else ""
    return REFERENCE.sub(substitute, value)


def resolved(node, env: dict[str, str]):
    """The parsed compose model with every string interpolated from `env` (compose interpolates after parsing)."""
    if isinstance(node, dict):
        return {key: resolved(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [resolved(value, env) for value in node]
    return interpolate(node, env) if isinstance(node, str) else node


def compose_model() -> dict:
    """docker/compose.yaml as parsed, before interpolation."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def environments(model: dict) -> dict[str, dict[str, str]]:
    """Each service's environment as a dict (compose allows a mapping or a list of NAME=value)."""
    out = {}
    for name, service in model["services"].items():
        env = service.get("environment") or {}
        out[name] = (dict(item.split("=", 1) for item in env) if isinstance(env, list)
                     else {k: str(v) for k, v in env.items()})
    return out


def host_ips(model: dict) -> dict[str, list[str]]:
    """Per service, the host address of each published port (short `IP:HOST:CONTAINER` or long syntax)."""
    out: dict[str, list[str]] = {}
    for name, service in model["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                out.setdefault(name, []).append(port.get("host_ip", ""))
            else:
                parts = str(port).rsplit(":", 2)
                out.setdefault(name, []).append(parts[0] if len(parts) == 3 else "")  # "" = every interface
    return out


def required_variables() -> set[str]:
    """The names of every ${VAR:?message} in the compose file: compose refuses to start without them."""
    return set(REQUIRED_REFERENCE.findall(COMPOSE_FILE.read_text().replace("$$", "")))


def make_env(path: Path, *args: str) -> subprocess.CompletedProcess:
    """docker/make_env.py run as `make env` runs it, writing `path` instead of docker/.env."""
    return subprocess.run([sys.executable, str(MAKE_ENV), "--path", str(path), *args], capture_output=True, text=True,
                          timeout=60)


def env_file(path: Path) -> dict[str, str]:
    """A .env file's NAME=value lines (compose's syntax, without quotes)."""
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_compose_publishes_ports_on_localhost_only_unless_told():
    model, credentials = compose_model(), {name: "placeholder" for name in required_variables()}
    by_default = host_ips(resolved(model, credentials))
    assert {"prefect-server", "minio"} <= set(by_default)
    assert all(ip == "127.0.0.1" for ips in by_default.values() for ip in ips), by_default
    assert "ports" not in model["services"]["postgres"]  # only the server reaches the database
    assert all(s.get("network_mode") != "host" for s in model["services"].values())
    overridden = host_ips(resolved(model, {**credentials, "SEMDPO_BIND": "0.0.0.0"}))
    assert all(ip == "0.0.0.0" for ips in overridden.values() for ip in ips)


def test_compose_file_holds_no_credential_literal():
    model = compose_model()
    for service, env in {**environments(model), "x-semdpo-env": model["x-semdpo-env"]}.items():
        for key, value in env.items():
            if CREDENTIAL_KEY.search(key):
                assert REQUIRED_REFERENCE.fullmatch(value), (f"{service}: {key} must be a ${{VAR:?...}} reference, "
                                                             f"not {value!r}")
            for password in re.findall(r"://[^:/@\s]+:([^@]+)@", value):  # user:password@ in a URL
                assert REQUIRED_REFERENCE.fullmatch(password), f"{service}: {key} carries a password literal"
    # the bucket container logs in with its environment's credentials, expanded by its shell
    bucket = model["services"]["bucket"]
    script = interpolate(" ".join(bucket["entrypoint"]), {})
    logins = re.findall(r'mc alias set \S+ \S+ "\$(\w+)" "\$(\w+)"', script)
    assert logins and all(REQUIRED_REFERENCE.fullmatch(environments(model)["bucket"][v]) for v in logins[0])
    # Prefect's basic auth: on at the server, and every client of the API sends it
    server, clients = environments(model)["prefect-server"], environments(model)
    assert "PREFECT_SERVER_API_AUTH_STRING" in server
    api_clients = [name for name, env in clients.items() if "PREFECT_API_URL" in env]
    assert {"deploy", "cpu-worker", "gpu-worker"} <= set(api_clients)
    assert all(clients[name]["PREFECT_API_AUTH_STRING"] == server["PREFECT_SERVER_API_AUTH_STRING"]
               for name in api_clients)
    # the healthcheck sends no credentials: it must use the path Prefect leaves open (GET /api/health)
    assert "/api/health'" in " ".join(model["services"]["prefect-server"]["healthcheck"]["test"])


def test_compose_refuses_to_start_without_the_env_file():
    assert {"SEMDPO_POSTGRES_PASSWORD", "SEMDPO_MINIO_USER", "SEMDPO_MINIO_PASSWORD",
            "SEMDPO_PREFECT_AUTH"} <= required_variables()
    with pytest.raises(MissingVariable):
        resolved(compose_model(), {"SEMDPO_BIND": "127.0.0.1"})


def test_make_env_writes_every_required_variable_and_keeps_an_existing_file(tmp_path):
    path = tmp_path / "docker" / ".env"
    written = make_env(path)
    assert written.returncode == 0, written.stderr
    values = env_file(path)
    assert set(values) == required_variables()
    assert all(re.fullmatch(r"[A-Za-z0-9_:-]{8,}", v)
               for v in values.values()), "safe in a URL, a user:password and .env"
    assert path.stat().st_mode & 0o777 == 0o600

    services = environments(resolved(compose_model(), values))  # compose starts: every ${VAR:?} has a value
    postgres_url = services["prefect-server"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert f":{services['postgres']['POSTGRES_PASSWORD']}@postgres:" in postgres_url
    minio = services["minio"]
    for worker in ("cpu-worker", "gpu-worker", "deploy"):
        assert services[worker]["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
        assert services[worker]["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
        assert (services[worker]["PREFECT_API_AUTH_STRING"]
                == services["prefect-server"]["PREFECT_SERVER_API_AUTH_STRING"])
    assert ":" in values["SEMDPO_PREFECT_AUTH"]  # Prefect's user:password form

    before = path.read_text()
    kept = make_env(path)
    assert kept.returncode == 1 and "exists" in kept.stderr and path.read_text() == before
    older = "".join(line + "\n" for line in before.splitlines() if not line.startswith("SEMDPO_HUMAN_EVAL_PASSWORD="))
    path.write_text(older)  # an .env from before the human study's password: the variable is added, the rest kept
    added = make_env(path)
    assert added.returncode == 0 and "added SEMDPO_HUMAN_EVAL_PASSWORD" in added.stdout
    assert env_file(path) == {**{k: v for k, v in values.items() if k != "SEMDPO_HUMAN_EVAL_PASSWORD"},
                              "SEMDPO_HUMAN_EVAL_PASSWORD": env_file(path)["SEMDPO_HUMAN_EVAL_PASSWORD"]}
    assert env_file(path)["SEMDPO_HUMAN_EVAL_PASSWORD"] != values["SEMDPO_HUMAN_EVAL_PASSWORD"]
    assert make_env(path, "--force").returncode == 0
    assert set(env_file(path)) == set(values)
    assert all(env_file(path)[name] != value for name, value in values.items())  # fresh random values


def test_env_files_stay_out_of_git_and_images():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("docker/.env", ".env"):
        ignored = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT)
        assert ignored.returncode == 0, f"{path} is not ignored by git"
    assert "**/.env" in (ROOT / ".dockerignore").read_text().splitlines()  # the build context is the repository
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^env:\n\tpython3 docker/make_env\.py", makefile, re.M)
