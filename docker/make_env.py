"""Write docker/.env: random credentials for every ${VAR:?} that docker/compose.yaml requires.

    python3 docker/make_env.py [--force] [--path PATH]      (or: make env, make env FORCE=1)

Standard library only, so it runs before the project is installed. Refuses to replace an existing
file unless --force: the stack's Postgres volume keeps the password of its first start. A variable
the file lacks (one a newer compose file requires) is appended, the others kept.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parent / ".env"  # compose's project directory for -f docker/compose.yaml

HEADER = """\
# Credentials of the docker/compose.yaml stack, written by docker/make_env.py. Keep it out of git.
# Ports are published on 127.0.0.1 only; to listen on every interface, uncomment:
# SEMDPO_BIND=0.0.0.0
# SEMDPO_UI_API_URL=http://HOST:4200/api
"""


def secret(nbytes: int = 24) -> str:
    """A random URL-safe token: safe inside a Postgres URL, a `user:password` string and .env."""
    return secrets.token_urlsafe(nbytes)


def credentials() -> dict[str, str]:
    """A fresh value for every variable the compose file requires."""
    return {
        "SEMDPO_POSTGRES_PASSWORD": secret(),
        "SEMDPO_MINIO_USER": f"semdpo-{secrets.token_hex(4)}",
        "SEMDPO_MINIO_PASSWORD": secret(),
        "SEMDPO_PREFECT_AUTH": f"semdpo:{secret()}",
        "SEMDPO_HUMAN_EVAL_PASSWORD": secret(),  # the human study's results page (issue 24)
    }


def env_text(values: dict[str, str]) -> str:
    """The .env file's text: the header, then one VAR=value line each."""
    return HEADER + "".join(f"{name}={value}\n" for name, value in values.items())


def existing_names(path: Path) -> set[str]:
    """The variables an .env file sets."""
    lines = path.read_text().splitlines()
    return {line.split("=", 1)[0].strip() for line in lines if "=" in line and not line.lstrip().startswith("#")}


def write_env(path: Path, force: bool = False) -> list[str]:
    """Write fresh credentials to `path` (mode 600), or, when it exists and not `force`, append
    the ones it lacks; returns the names written (none: the file was kept as it was)."""
    values = credentials()
    if path.exists() and not force:
        missing = {k: v for k, v in values.items() if k not in existing_names(path)}
        if missing:
            with path.open("a") as f:
                f.write("".join(f"{name}={value}\n" for name, value in missing.items()))
        return list(missing)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(env_text(values))
    os.chmod(path, 0o600)
    return list(values)


def main(argv: list[str] | None = None) -> int:
    """The command line: 0 when written, 1 when an existing file was kept."""
    parser = argparse.ArgumentParser(description="Write docker/.env with random credentials for the compose stack.")
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH, help=f"where to write (default: {DEFAULT_PATH})")
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    args = parser.parse_args(argv)
    existed = args.path.exists() and not args.force
    written = write_env(args.path, args.force)
    if not written:
        print(f"{args.path} exists; kept it (--force, or make env FORCE=1, replaces it)", file=sys.stderr)
        return 1
    print(f"added {', '.join(written)} to {args.path}, kept the rest" if existed else f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
