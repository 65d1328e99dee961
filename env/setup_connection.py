"""Write the ssh client config and DeepSpeed hostfile that name the nodes of a multi-node run.

Run inside the container on every node (``env/start_docker.sh`` does) with the nodes' addresses in a
fixed order, the same on every node::

    python env/setup_connection.py 172.30.0.214 172.30.0.215      # or: --ip-list env/ip_list.txt

It writes ``~/.ssh/config`` with one ``Host node{i}`` entry per address (user root, port 2222, where the
image's sshd listens) and ``<repo>/hostfile`` with ``node{i} slots={N}`` lines for
``deepspeed --hostfile``. Entries of ours are kept between ``# BEGIN cogview nodes`` and
``# END cogview nodes``: a rerun replaces that block and keeps anything else the ssh config holds
(the original overwrote the whole file). Both files are written atomically.
"""

import argparse
import ipaddress
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from common.atomic_files import atomic_path  # noqa: E402  (after the repository is importable)
from common.errors import InputError  # noqa: E402

SSH_PORT = 2222  # the image's sshd port: the host's own sshd keeps 22 under --network=host
BLOCK_BEGIN = "# BEGIN cogview nodes"
BLOCK_END = "# END cogview nodes"
HOSTNAME_PATTERN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9-]+)*$")


class ConnectionSetupError(InputError):
    """Bad node list: the message names the address or file."""


def node_name(index: int) -> str:
    """The name a node has in the ssh config and the hostfile (0-based, as the original)."""
    return f"node{index}"


def validate_addresses(addresses: Sequence[str], source: str) -> list[str]:
    """Check that ``addresses`` are distinct IP addresses or host names (``source``: where they came from)."""
    if not addresses:
        raise ConnectionSetupError(f"{source}: no node addresses given")
    seen: set[str] = set()
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            if not HOSTNAME_PATTERN.match(address):
                raise ConnectionSetupError(
                    f"{source}: {address!r} is neither an IP address nor a host name"
                ) from None
        if address in seen:
            raise ConnectionSetupError(f"{source}: {address} is listed twice")
        seen.add(address)
    return list(addresses)


def read_ip_list(path: Path) -> list[str]:
    """Addresses from an ip list file: separated by spaces or lines, ``#`` starts a comment."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConnectionSetupError(f"{path}: cannot read the node list ({error.strerror})") from None
    addresses = [word for line in text.splitlines() for word in line.split("#", 1)[0].split()]
    return validate_addresses(addresses, str(path))


def ssh_config_block(addresses: Sequence[str]) -> str:
    """The ``Host node{i}`` entries, between the markers that let a rerun replace them."""
    entries = [
        f"Host {node_name(i)}\n"
        f"    User root\n"
        f"    Port {SSH_PORT}\n"
        f"    Hostname {address}\n"
        f"    StrictHostKeyChecking accept-new\n"
        for i, address in enumerate(addresses)
    ]
    return f"{BLOCK_BEGIN}\n{''.join(entries)}{BLOCK_END}\n"


def merge_ssh_config(existing: str, block: str) -> str:
    """``existing`` with its cogview block replaced by ``block`` (or ``block`` put first if it had none).

    First is where ssh looks first: its first matching value wins.
    """
    pattern = re.compile(rf"^{re.escape(BLOCK_BEGIN)}\n.*?^{re.escape(BLOCK_END)}\n?", re.S | re.M)
    if pattern.search(existing):
        return pattern.sub(lambda _: block, existing, count=1)
    return block + ("\n" + existing if existing else "")


def hostfile_text(addresses: Sequence[str], slots: int) -> str:
    """DeepSpeed's hostfile: ``node{i} slots={slots}``, one line per node."""
    return "".join(f"{node_name(i)} slots={slots}\n" for i in range(len(addresses)))


def _write_text(path: Path, text: str, mode: int) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
        temporary.chmod(mode)


def setup_connection(addresses: Sequence[str], home: Path, hostfile: Path, slots: int) -> None:
    """Write ``home/.ssh/config`` (merged, mode 600) and ``hostfile`` for ``addresses``."""
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = ssh_dir / "config"
    existing = config.read_text(encoding="utf-8") if config.exists() else ""
    _write_text(config, merge_ssh_config(existing, ssh_config_block(addresses)), 0o600)
    _write_text(hostfile, hostfile_text(addresses, slots), 0o644)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("addresses", nargs="*", help="node addresses in order: node0 node1 ...")
    parser.add_argument("--ip-list", type=Path, help="read the addresses from this file instead")
    parser.add_argument("--slots", type=int, default=int(os.environ.get("NUM_GPUS_PER_WORKER", 8)))
    parser.add_argument("--home", type=Path, default=Path.home(), help="where .ssh/config goes")
    parser.add_argument("--hostfile", type=Path, default=REPO_ROOT / "hostfile")
    args = parser.parse_args(argv)
    if args.slots < 1:
        parser.error(f"--slots must be at least 1, not {args.slots}")
    if args.addresses and args.ip_list:
        parser.error("give the addresses or --ip-list, not both")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.ip_list:
            addresses = read_ip_list(args.ip_list)
        else:
            addresses = validate_addresses(args.addresses, "command line")
        setup_connection(addresses, args.home, args.hostfile, args.slots)
    except ConnectionSetupError as error:
        print(f"setup_connection: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"setup_connection: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return 1
    print(f"setup_connection: {len(addresses)} nodes in {args.home / '.ssh' / 'config'} and {args.hostfile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
