#!/usr/bin/env bash
# Start the CogView container on this node; run it on every node of a multi-node job. The container gets
# the original's options (all GPUs, host network and IPC, IPC_LOCK and /dev for InfiniBand, privileged),
# the repository mounted at /root/cogview, and runs: sshd (port 2222), then env/setup_connection.py with
# the addresses of env/ip_list.txt (which writes ~/.ssh/config and <repo>/hostfile), then sleeps.
# Then: docker exec -it bg-cogview bash, and scripts/pretrain_multiple_nodes.sh on node0.
# Environment:
#   COGVIEW_IMAGE        the image (default cogview/cogview:cuda12, the tag the README builds; the
#                        original ran a tag its README never pulled)
#   COGVIEW_CONTAINER    the container's name (default bg-cogview)
#   IP_LIST              the node list (default env/ip_list.txt; the original README said docker/)
#   NUM_GPUS_PER_WORKER  slots per node in the hostfile (default 8)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${COGVIEW_IMAGE:-cogview/cogview:cuda12}"
name="${COGVIEW_CONTAINER:-bg-cogview}"
ip_list="${IP_LIST:-$repo/env/ip_list.txt}"
slots="${NUM_GPUS_PER_WORKER:-8}"

if [ ! -f "$ip_list" ]; then
  echo "start_docker: $ip_list not found: copy env/ip_list.txt.example there and list your nodes" >&2
  exit 2
fi
read -r -a addresses <<<"$(sed -e 's/#.*//' "$ip_list" | tr '\n' ' ')"
if [ "${#addresses[@]}" -eq 0 ]; then
  echo "start_docker: $ip_list lists no node addresses" >&2
  exit 2
fi

mounted=/root/cogview
inside="/etc/init.d/ssh start"
inside+=" && python $mounted/env/setup_connection.py --slots $(printf %q "$slots")"
inside+="$(printf ' %q' "${addresses[@]}")"
inside+=" && sleep infinity"

exec docker run --gpus all -d --ipc=host --cap-add=IPC_LOCK -v /sys/class/net/:/sys/class/net/ \
  --device=/dev/ --privileged --network=host -v "$repo:$mounted" --name "$name" "$image" \
  bash -c "$inside"
