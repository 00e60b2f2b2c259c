"""A new user's first command: `make run` on a fresh clone, with no settings, must serve.

Regression for a relative default data directory (`./iumad-data`): redis-server changes into its
`--dir` before it opens its log file, so every relative path it was given pointed nowhere and the
embedded Redis never started. Every other test uses absolute temporary directories.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from service_processes import tail, wait_until

from core.settings import Settings
from iumad.embedded import RedisServerProcess, free_port
from model.errors import IumadError

pytestmark = pytest.mark.slow  # real processes (make test-fast leaves them out)

REPOSITORY = Path(__file__).resolve().parents[1]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("IUMAD_")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def _serves_a_fresh_install(url: str, process: subprocess.Popen, log: Path) -> None:
    """/healthz and /readyz answer 200 and /inspect with nothing enrolled answers its 409."""
    wait_until(
        lambda: process.poll() is not None or _answers(url + "/healthz"), 180, 0.3, "the gateway to serve"
    )
    assert process.poll() is None, f"the server exited ({process.returncode}):\n{tail(log)}"
    assert httpx.get(url + "/healthz", timeout=5).status_code == 200
    readiness = httpx.get(url + "/readyz", timeout=5)
    assert readiness.status_code == 200, readiness.text
    assert readiness.json()["state"] == "empty"
    inspect = httpx.post(url + "/inspect", files={"rgb": ("a.png", b"x", "image/png")}, timeout=5)
    assert inspect.status_code == 409, inspect.text
    assert inspect.json()["error"]["code"] == "nothing_enrolled"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _start(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """A process group of its own (so that the whole tree can be stopped), output into `log`."""
    with log.open("wb") as output:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _stop_group(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM to the whole process group (make and the server it started), then wait."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_a_relative_data_directory_is_made_absolute_once_where_settings_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IUMAD_DATA_DIR", raising=False)
    assert Settings().data_dir == tmp_path / "iumad-data"
    assert Settings(data_dir=Path("lines/../station-3")).data_dir == tmp_path / "station-3"
    monkeypatch.setenv("IUMAD_DATA_DIR", "rel-data")
    assert Settings().data_dir == tmp_path / "rel-data"


def test_an_embedded_redis_that_cannot_start_says_why(tmp_path: Path) -> None:
    (tmp_path / "redis.log").mkdir()  # the server cannot open its log file there
    server = RedisServerProcess(tmp_path)
    with pytest.raises(IumadError) as raised:
        server.start(timeout_s=10)
    message = str(raised.value)
    assert "exited with status" in message
    assert "Can't open the log file" in message
    assert str(tmp_path / "redis.log") in message
    assert not server.alive()


def test_serve_from_a_fresh_directory_with_no_settings(tmp_path: Path) -> None:
    """`iumad serve` as `make run` starts it: no IUMAD_* at all, so the default data directory."""
    workdir = tmp_path / "fresh"
    workdir.mkdir()
    port = free_port()
    log = tmp_path / "serve.log"
    process = _start(
        [sys.executable, "-m", "iumad.cli", "serve", "--port", str(port)], workdir, _clean_env(), log
    )
    try:
        _serves_a_fresh_install(f"http://127.0.0.1:{port}", process, log)
        assert (workdir / "iumad-data" / "redis" / "appendonly.aof").exists()
        assert (workdir / "iumad-data" / "logs" / "worker.log").exists()
    finally:
        _stop_group(process)
    assert process.returncode == 0, tail(log)


def readme_first_command() -> str:
    """The first line of the README's first code block, without its comment."""
    text = (REPOSITORY / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    assert block is not None, "README.md must open with a bash block of the two commands"
    return block.group(1).splitlines()[0].split("#", 1)[0].strip()


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None, reason="needs make and git")
def test_the_readme_first_command_serves_on_a_clean_copy_of_the_repository(tmp_path: Path) -> None:
    """The README's first command, as written, in a copy of the tracked files.

    It reuses the suite's installed environment (`VENV=`, the stamp newer than the copy's
    pyproject.toml) so that it takes seconds, not an install; everything else is as a user runs it.
    """
    command = readme_first_command()
    assert command == "make run", f"the README's first command changed to {command!r}: update this test"
    venv = Path(sys.prefix)
    stamp = venv / ".installed"
    if not stamp.exists():
        pytest.skip(f"the suite does not run from a `make install` environment ({stamp} missing)")
    clone = tmp_path / "clone"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPOSITORY, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (item.decode() for item in tracked)):
        source = REPOSITORY / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    before = stamp.stat().st_mtime - 60
    os.utime(clone / "pyproject.toml", (before, before))  # the stamp is up to date: no reinstall
    port = free_port()
    log = tmp_path / "make-run.log"
    process = _start([*command.split(), f"VENV={venv}"], clone, _clean_env(IUMAD_PORT=str(port)), log)
    try:
        _serves_a_fresh_install(f"http://127.0.0.1:{port}", process, log)
        assert (clone / "iumad-data" / "redis" / "appendonly.aof").exists()
    finally:
        _stop_group(process)


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` now (children of children too), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_killed_gateway_takes_its_embedded_redis_worker_and_ingest_processes_with_it(
    tmp_path: Path, synthetic_root: Path
) -> None:
    """SIGKILL (the OOM killer) runs no cleanup: every child must go by itself."""
    from service_processes import mvtec_zip

    port = free_port()
    env = _clean_env(IUMAD_DATA_DIR=str(tmp_path / "data"), IUMAD_MIN_HOLDOUT_SAMPLES="2")
    process = _start(
        [sys.executable, "-m", "iumad.cli", "serve", "--port", str(port)], tmp_path, env, tmp_path / "log"
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is not None or _answers(url + "/healthz"), 180, 0.3, "the gateway")
        upload = httpx.post(
            url + "/enroll-object",
            data={"object": "disc"},
            files={"archive": ("disc.zip", mvtec_zip(synthetic_root, "disc"))},
            timeout=60,
        )  # starts an ingest process, and a job in the worker
        assert upload.status_code == 202, upload.text
        children = _descendants(process.pid)
        assert len(children) >= 3, children  # Redis, the worker, an ingest process (and more)
        process.kill()
        process.wait()
        wait_until(lambda: not any(_running(pid) for pid in children), 30, 0.3, "the children to exit")
    finally:
        if process.poll() is None:
            _stop_group(process)
