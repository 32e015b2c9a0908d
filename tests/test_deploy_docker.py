"""deploy/docker/: the compose file and the Dockerfile, checked without Docker (none here): services,
images and builds, every file they name, the commands against the real CLIs; and the two entrypoint
scripts run as they would in the containers (Mosquitto, the coordinator, two agents), for one round."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import click
import pytest
import yaml

from fedge.agent.cli import cli as agent_cli
from fedge.coordinator.service.cli import cli as coordinator_cli
from tests.profiles_fixtures import PROFILE_DIR
from tests.service_fixtures import ROOT

DOCKER = ROOT / "deploy" / "docker"
COMPOSE = DOCKER / "compose.yaml"
CLIS = {"fedge-agent": agent_cli, "fedge-coordinator": coordinator_cli}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _check_command(prog: str, args: list[str]) -> None:
    """Resolve ``prog args`` through the click tree and parse the options: unknown ones fail here."""
    cmd: click.Command = CLIS[prog]
    rest = list(args)
    while isinstance(cmd, click.Group):
        name = rest.pop(0)
        assert name in cmd.commands, f"{prog}: no command {name!r}"
        cmd = cmd.commands[name]
    # a shell variable stands for a file the script made (options such as --db want it to exist)
    ctx = cmd.make_context(prog, [a if "$" not in a else str(COMPOSE) for a in rest], resilient_parsing=False)
    assert ctx is not None


def test_compose_services_images_and_files(compose) -> None:
    services = compose["services"]
    assert set(services) == {"mosquitto", "coordinator", "agent"}
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    build = services["coordinator"]["build"]
    context = (DOCKER / build["context"]).resolve()
    assert context == ROOT and (context / build["dockerfile"]).is_file()
    assert services["agent"]["image"] == services["coordinator"]["image"]  # built once, used by both
    assert services["agent"]["deploy"]["replicas"] >= 2
    # the coordinator waits for as many enrolled agents as compose starts
    assert int(services["coordinator"]["environment"]["FEDGE_AGENTS"]) == services["agent"]["deploy"]["replicas"]
    assert "coordinator" in services["agent"]["depends_on"] and "mosquitto" in services["coordinator"]["depends_on"]
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).is_file(), f"{name}: {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: named volume {source} is not declared"
    # both fedge services share the coordinator's store
    assert "fleet:/fleet" in services["coordinator"]["volumes"] and "fleet:/fleet" in services["agent"]["volumes"]


def test_compose_commands_are_real_commands(compose) -> None:
    services = compose["services"]
    script, *args = services["coordinator"]["command"]
    assert script == "coordinator.sh" and (DOCKER / script).is_file()
    wrapped = re.search(r"exec (fedge-coordinator serve .*)", (DOCKER / script).read_text().replace("\\\n", " "))
    base = shlex.split(wrapped.group(1).replace('"$@"', ""))
    _check_command("fedge-coordinator", base[1:] + args)
    assert services["agent"]["command"] == ["agent.sh"] and (DOCKER / "agent.sh").is_file()


def test_every_fedge_command_in_the_entrypoints_parses() -> None:
    seen = 0
    for script in ("agent.sh", "coordinator.sh"):
        text = (DOCKER / script).read_text().replace("\\\n", " ")
        assert subprocess.run(["sh", "-n", str(DOCKER / script)]).returncode == 0
        text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)  # ${VAR:-default}: the default
        text = re.sub(r"\$\{\w+:\+([^}]*)\}", r"\1", text)  # ${VAR:+--opt "$VAR"}: as when VAR is set
        for m in re.finditer(r"(fedge-(?:agent|coordinator)) ([^|)\n]*)", text):
            words = [w for w in shlex.split(m.group(2)) if w != "$@"]
            _check_command(m.group(1), words)
            seen += 1
    assert seen >= 6


def test_dockerfile_copies_files_that_exist() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    copies = [ln.split()[1:-1] for ln in text.splitlines() if ln.startswith("COPY ")]
    assert copies
    for sources in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    assert re.search(r'^RUN pip install "\.\[coordinator\]"', text, re.M)
    assert (ROOT / "firmware_configs" / "trial" / "local.toml") == PROFILE_DIR / "trial" / "local.toml"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_entrypoints_run_a_fleet_round_on_mosquitto(mosquitto, tmp_path: Path) -> None:
    """What the containers run, on this machine: coordinator.sh and two agent.sh on one Mosquitto."""
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    bin_dir = Path(os.sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        FEDGE_BROKER=mosquitto.url,
        FEDGE_FLEET_DIR=str(fleet),
        FEDGE_AGENTS="2",
        FEDGE_PROFILE=str(PROFILE_DIR / "trial" / "local.toml"),
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
    )
    procs = []
    try:
        log = open(tmp_path / "coordinator.log", "wb")
        procs.append(
            subprocess.Popen(
                [
                    "sh",
                    str(DOCKER / "coordinator.sh"),
                    "--rounds",
                    "1",
                    "--goal",
                    "2",
                    "--min-clients",
                    "2",
                    "--no-secagg",
                    "--dp",
                    "local",
                    "--noise-multiplier",
                    "1.1",
                    "--clip",
                    "1.0",
                    "--checkin-window",
                    "60",
                    "--metrics-port",
                    "0",
                    "--metrics-host",
                    "127.0.0.1",
                ],
                cwd=tmp_path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        for i in range(2):
            home = tmp_path / f"agent{i}"
            home.mkdir()
            procs.append(
                subprocess.Popen(
                    ["sh", str(DOCKER / "agent.sh")],
                    cwd=home,
                    env=dict(env, HOME=str(home), FEDGE_DEVICE_ID=f"c-{i}"),
                    stdout=open(home / "agent.log", "wb"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        coordinator = procs[0]
        assert coordinator.wait(200) == 0, (tmp_path / "coordinator.log").read_text()[-3000:]
        out = (tmp_path / "coordinator.log").read_text()
        assert re.search(r"round 1: completed .* participants 2 dropped 0", out), out[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        time.sleep(0)
