"""The Docker files, checked statically (no Docker engine runs on our machines): they parse,
every path they copy exists, and the images install the project by the README's install step."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [tuple(line.strip().split(None, 1)) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


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
