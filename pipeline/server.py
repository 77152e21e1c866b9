"""A team's MLflow tracking server on loopback: PostgreSQL as the backend store, artifacts proxied by the server.

`make server` (`python -m pipeline.server`) starts, under one folder (default `build/server`):
  - a PostgreSQL cluster of its own (Debian's `postgresql`, `make system`) on 127.0.0.1, database `mlflow`;
  - `mlflow server --backend-store-uri postgresql://... --artifacts-destination <folder>/artifacts`, so clients
    log runs, models and pictures over HTTP alone and need no access to the artifact folder;
and stops both on Ctrl-C or SIGTERM. The pipeline logs there with `MLFLOW_TRACKING_URI=http://127.0.0.1:<port>`.
A second start reuses the cluster and its runs. PostgreSQL trusts local connections here (loopback only, a
developer's or CI's machine); a shared deployment sets a password (`initdb --auth=scram-sha-256`) and puts the
server behind its own host name (`--allowed-hosts`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType

DATABASE = USER = "mlflow"


class ServerError(RuntimeError):
    """PostgreSQL or the MLflow server could not be started."""


def postgres_bin() -> Path:
    """The folder of the newest installed PostgreSQL's `initdb` and `pg_ctl` (Debian's layout, or on PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise ServerError("PostgreSQL is not installed (no initdb): `make system` installs Debian's postgresql")


def _as_owner(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its commands as the `postgres` user the package made."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_postgres(folder: Path, port: int) -> str:
    """Initialise (once) and start the cluster in `folder`/postgres on 127.0.0.1:`port`; returns the
    SQLAlchemy URI of database `mlflow`."""
    bin_dir, data = postgres_bin(), folder / "postgres"
    running = _postmaster(data)
    if running:
        raise ServerError(f"PostgreSQL already runs from {data} (pid {running}): another `make server` holds "
                          f"{folder}; stop it, or give this one its own --folder")
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    if not (data / "PG_VERSION").is_file():
        shutil.rmtree(data, ignore_errors=True)  # a half-made cluster of an interrupted first start
        _run(_as_owner([str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8"]),
             "initdb")
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {data}"
    _run(_as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "postgres.log"), "-o", options,
                    "-w", "-t", "60", "start"]), f"PostgreSQL (its log: {folder / 'postgres.log'})")
    exists = _run(_as_owner([str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-d",
                             "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"]), "psql")
    if exists.strip() != "1":
        _run(_as_owner([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE]),
             "createdb")
    return f"postgresql://{USER}@127.0.0.1:{port}/{DATABASE}"


def _postmaster(data: Path) -> int | None:
    """The pid of the PostgreSQL server running from `data`, or None (no pid file, or a stale one)."""
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def query(folder: Path, sql: str) -> str:
    """`sql` run by psql on database `mlflow` of the cluster running from `folder` (its port from postmaster.pid)."""
    port = (folder / "postgres" / "postmaster.pid").read_text().splitlines()[3].strip()
    return _run(_as_owner([str(postgres_bin() / "psql"), "-h", "127.0.0.1", "-p", port, "-U", USER, "-d", DATABASE,
                           "-tAc", sql]), "psql")


def stop_postgres(folder: Path) -> None:
    data = folder / "postgres"
    if (data / "postmaster.pid").is_file():
        subprocess.run(_as_owner([str(postgres_bin() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True, text=True)


def _run(cmd: list[str], what: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ServerError(f"{what} failed ({' '.join(cmd)}):\n{(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout


def start_mlflow(store: str, artifacts: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`mlflow server` on 127.0.0.1:`port` with `store` as its backend and `artifacts` proxied; returns once it
    answers /health."""
    artifacts.mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).parent / "mlflow"
    with log.open("ab") as out:
        server = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", store, "--artifacts-destination",
                                   str(artifacts), "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port),
                                   "--workers", "1"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # the first start creates MLflow's tables in PostgreSQL
    while not healthy(url):
        if server.poll() is not None or time.monotonic() > deadline:
            stop(server)
            raise ServerError(f"mlflow server did not start on {url}; its log: {log}\n"
                              f"{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.5)
    return server


def healthy(url: str, path: str = "/health") -> bool:
    """Whether a server answers GET `url` + `path` (`mlflow server`: /health, `mlflow models serve`: /ping)."""
    try:
        with urllib.request.urlopen(url + path, timeout=2):
            return True
    except OSError:
        return False


def stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (gunicorn or uvicorn and their workers), SIGKILL if it lingers."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _stop_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=Path("build/server"),
                    help="where the cluster, the artifacts and the logs live (kept between starts)")
    ap.add_argument("--port", type=int, default=5000, help="the MLflow server's port on 127.0.0.1")
    ap.add_argument("--postgres-port", type=int, default=None, help="PostgreSQL's port (default: a free one)")
    args = ap.parse_args()
    folder = args.folder.resolve()
    signal.signal(signal.SIGTERM, _stop_signal)
    try:
        store = start_postgres(folder, args.postgres_port or free_port())
    except ServerError as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        server = start_mlflow(store, folder / "artifacts", args.port, folder / "mlflow.log")
    except (ServerError, KeyboardInterrupt) as exc:
        stop_postgres(folder)
        raise SystemExit(f"error: {exc}" if isinstance(exc, ServerError) else 1) from None
    url = f"http://127.0.0.1:{args.port}"
    print(f"MLflow server {url}: runs in {store}, artifacts in {folder / 'artifacts'}\n"
          f"log the pipeline there with: MLFLOW_TRACKING_URI={url} dvc repro\n"
          "Ctrl-C stops the server and PostgreSQL", flush=True)
    status = 0
    try:
        server.wait()
        print(f"error: mlflow server exited ({server.returncode}); its log: {folder / 'mlflow.log'}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        pass
    finally:
        stop(server)
        stop_postgres(folder)
    print("stopped the MLflow server and PostgreSQL", flush=True)
    raise SystemExit(status)


if __name__ == "__main__":
    main()
