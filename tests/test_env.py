"""env/ for clusters: the Dockerfile (linted; no daemon needed), setup_connection.py, start_docker.sh."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from env import setup_connection

REPO = Path(__file__).resolve().parent.parent
HADOLINT = Path(sys.executable).parent / "hadolint"
IMAGE_TAG = "cogview/cogview:cuda12"


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    config = REPO / "env" / ".hadolint.yaml"
    command = [str(HADOLINT), "--no-color", "--config", str(config), str(dockerfile)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_dockerfile_passes_hadolint():
    result = hadolint(REPO / "env" / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    """The lint above can fail: the same linter and settings reject a latest tag and a cd in RUN."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && pip install numpy\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert {"DL3007", "DL3003", "DL3013"} <= set(re.findall(r"DL\d{4}", result.stdout))


def test_dockerfile_is_current_and_builds_with_the_pinned_setup():
    text = (REPO / "env" / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    base = next(line for line in instructions if line.startswith("ARG CUDA_IMAGE="))
    assert re.fullmatch(r"ARG CUDA_IMAGE=nvidia/cuda:12\.\d+\.\d+-\S*devel-ubuntu\S+", base)
    body = "\n".join(instructions)
    assert "python3.11" in body and "pdsh" in body and "openssh-server" in body and "Port 2222" in body
    assert "PYTHON=python3.11 bash env/setup.sh --no-tokenizer" in body  # the same pins as everywhere
    assert not re.search(r"conda|apex", body, re.I)
    assert f"-t {IMAGE_TAG} ." in text


def test_setup_script_honours_cogview_venv_and_no_tokenizer():
    text = (REPO / "env" / "setup.sh").read_text()
    assert 'venv="${COGVIEW_VENV:-$repo/.venv}"' in text
    assert "--no-tokenizer ] ||" in text


# --- setup_connection.py ----------------------------------------------------------------------------


def ssh_resolved(config: Path, host: str) -> dict[str, str]:
    """What the real ssh client makes of ``host`` under ``config`` (``ssh -G`` connects to nothing)."""
    output = subprocess.run(
        ["ssh", "-G", "-F", str(config), host], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split(" ", 1) for line in output.splitlines() if " " in line)


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client")
def test_setup_connection_writes_ssh_config_and_hostfile(tmp_path, capsys):
    hostfile = tmp_path / "hostfile"
    argv = ["--home", str(tmp_path), "--hostfile", str(hostfile), "--slots", "4", "10.1.0.7", "gpu-b.local"]
    assert setup_connection.main(argv) == 0
    assert hostfile.read_text() == "node0 slots=4\nnode1 slots=4\n"
    config = tmp_path / ".ssh" / "config"
    assert config.stat().st_mode & 0o777 == 0o600
    for host, address in [("node0", "10.1.0.7"), ("node1", "gpu-b.local")]:
        resolved = ssh_resolved(config, host)
        assert (resolved["hostname"], resolved["port"], resolved["user"]) == (address, "2222", "root")
    assert "2 nodes" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client")
def test_rerun_replaces_our_entries_and_keeps_the_users(tmp_path):
    ssh_dir = tmp_path / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "config").write_text("Host github.com\n    User git\n    Port 443\n")
    common = ["--home", str(tmp_path), "--hostfile", str(tmp_path / "hostfile")]
    assert setup_connection.main([*common, "10.0.0.1", "10.0.0.2", "10.0.0.3"]) == 0
    assert setup_connection.main([*common, "10.0.0.9"]) == 0
    text = (ssh_dir / "config").read_text()
    assert text.count(setup_connection.BLOCK_BEGIN) == 1 and "node1" not in text
    assert ssh_resolved(ssh_dir / "config", "node0")["hostname"] == "10.0.0.9"
    assert ssh_resolved(ssh_dir / "config", "github.com")["port"] == "443"
    assert (tmp_path / "hostfile").read_text() == "node0 slots=8\n"


def test_ip_list_file_with_comments_and_lines(tmp_path):
    ip_list = tmp_path / "ip_list.txt"
    ip_list.write_text("# our nodes\n172.30.0.214 172.30.0.215\n172.30.0.209  # the third\n")
    assert setup_connection.read_ip_list(ip_list) == ["172.30.0.214", "172.30.0.215", "172.30.0.209"]
    assert setup_connection.read_ip_list(REPO / "env" / "ip_list.txt.example")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no node addresses"),
        ("10.0.0.1 10.0.0.1\n", "10.0.0.1 is listed twice"),
        ("10.0.0.1 bad_host!\n", "'bad_host!' is neither an IP address nor a host name"),
    ],
)
def test_bad_node_lists_are_one_line_naming_the_file(tmp_path, capsys, content, message):
    ip_list = tmp_path / "ip_list.txt"
    ip_list.write_text(content)
    home = tmp_path / "home"
    assert setup_connection.main(["--ip-list", str(ip_list), "--home", str(home)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(ip_list) in error and message in error
    assert not home.exists()  # nothing written


# --- start_docker.sh --------------------------------------------------------------------------------


def run_start_docker(tmp_path: Path, ip_list: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run env/start_docker.sh with a fake ``docker`` first on PATH that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "docker_args"
    fake = bin_dir / "docker"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" > {shlex.quote(str(record))}\n')
    fake.chmod(0o755)
    environment = {k: v for k, v in os.environ.items() if k not in ("COGVIEW_IMAGE", "COGVIEW_CONTAINER")}
    environment.update(PATH=f"{bin_dir}:{os.environ['PATH']}", IP_LIST=str(ip_list), **env)
    script = REPO / "env" / "start_docker.sh"
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=environment), record


def test_start_docker_runs_the_original_container_options(tmp_path):
    ip_list = tmp_path / "ip_list.txt"
    ip_list.write_text("172.30.0.214 172.30.0.215\n")
    result, record = run_start_docker(tmp_path, ip_list, NUM_GPUS_PER_WORKER="4")
    assert result.returncode == 0, result.stderr
    argv = record.read_bytes().decode().split("\0")[:-1]
    assert argv[:-1] == [
        "run", "--gpus", "all", "-d", "--ipc=host", "--cap-add=IPC_LOCK",
        "-v", "/sys/class/net/:/sys/class/net/", "--device=/dev/", "--privileged", "--network=host",
        "-v", f"{REPO}:/root/cogview",
        "--name", "bg-cogview", IMAGE_TAG, "bash", "-c",
    ]  # fmt: skip
    # The tag the README builds is the tag the script runs (the original's differed).
    assert f"docker build -f env/Dockerfile -t {IMAGE_TAG} ." in (REPO / "README.md").read_text()

    start_sshd, connect, sleep = argv[-1].split(" && ")
    assert (start_sshd, sleep) == ("/etc/init.d/ssh start", "sleep infinity")
    inside = shlex.split(connect)
    assert inside[:2] == ["python", "/root/cogview/env/setup_connection.py"]
    # The container's setup command, run here with the repository where the container mounts it.
    home, hostfile = tmp_path / "home", tmp_path / "hostfile"
    command = [sys.executable, str(REPO / "env" / "setup_connection.py"), *inside[2:]]
    command += ["--home", str(home), "--hostfile", str(hostfile)]
    subprocess.run(command, check=True, capture_output=True)
    assert hostfile.read_text() == "node0 slots=4\nnode1 slots=4\n"
    assert "Hostname 172.30.0.215" in (home / ".ssh" / "config").read_text()


def test_start_docker_without_an_ip_list_says_where_it_goes(tmp_path):
    result, record = run_start_docker(tmp_path, tmp_path / "missing.txt")
    assert result.returncode == 2 and not record.exists()
    assert result.stderr.count("\n") == 1 and "ip_list.txt.example" in result.stderr
