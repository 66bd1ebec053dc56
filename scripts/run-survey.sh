#!/usr/bin/env bash
# The main job: runs the EnergieBroker metering survey on Motey agents.
#
#   scripts/run-survey.sh             one node: the Data API and the meter reader on one agent
#   scripts/run-survey.sh --cluster   the field layout on one machine: a "cloud" node hosting
#                                     the Data API, two "edge" nodes of which only one has the
#                                     optical probe (three agents, one embedded broker)
#
# It builds the agent and the workload images, creates the survey PKI and a demo household
# (kept in .survey/ and reused on the next run), starts the agent(s) with embedded defaults
# (embedded MQTT broker, sled store), starts the simulated optical probe and announces it to
# the probe node as a hardware event, deploys blueprints/data-api.yaml and
# blueprints/meter-reader.yaml through the REST API, and shows measurements arriving in the
# Data API. Ctrl-C (or SIGTERM) terminates the services and stops the agents; nothing is
# left running.
#
# Settings (environment): SURVEY_DIR (.survey), MOTEY_PORT (5023; the cluster uses three
# consecutive ports), PEER_PORT (5091, likewise), MQTT_PORT (1883), DATA_API_PORT (8443),
# DEVICE_PORT (8080, the household's device frontend), PROBE_PORT (7070),
# MEASUREMENT_INTERVAL (60 s), REPORT_INTERVAL (120 s), SKIP_BUILD (1: use what is built),
# MOTEY_BUILD_PROFILE (release; dev runs the debug binaries, as the test suite does).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

cluster=false
case "${1:-}" in
  --cluster) cluster=true ;;
  "") ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
esac

survey=${SURVEY_DIR:-$root/.survey}
motey_port=${MOTEY_PORT:-5023}
peer_port=${PEER_PORT:-5091}
mqtt_port=${MQTT_PORT:-1883}
api_port=${DATA_API_PORT:-8443}
device_port=${DEVICE_PORT:-8080}
probe_port=${PROBE_PORT:-7070}
measurement_interval=${MEASUREMENT_INTERVAL:-60}
report_interval=${REPORT_INTERVAL:-120}
email=household@survey.example
mkdir -p "$survey"
survey=$(cd "$survey" && pwd)

say() { printf '\n==> %s\n' "$*"; }
secret() { [ -s "$1" ] || python3 -c 'import secrets;print(secrets.token_hex(24))' > "$1"; chmod 0600 "$1"; cat "$1"; }

# The nodes: name, REST port, peer port. Node 0 runs the embedded broker and the Data API;
# the probe node (last but one in the cluster, the only one in one-node mode) gets
# optical-probe; the meter reader is posted to the last node, which places it.
if $cluster; then
  nodes=(cloud edge-probe edge-plain)
else
  nodes=(survey)
fi
probe_node=$(( ${#nodes[@]} > 1 ? 1 : 0 ))
reader_owner=$(( ${#nodes[@]} - 1 ))
rest_port() { echo $((motey_port + $1)); }
node_dir() { echo "$survey/nodes/${nodes[$1]}"; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  say "building the agent and the workload images"
  scripts/build-images.sh meter-reader data-api   # also builds the agent's binary
fi
case "${MOTEY_BUILD_PROFILE:-release}" in dev) out=debug ;; *) out=release ;; esac
bin=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')/$out

# The host as containers on the default bridge see it (Docker does not always record the
# gateway; it is then the subnet's first address).
gateway=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}')
[ -n "$gateway" ] || gateway=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' |
  python3 -c 'import ipaddress,sys;print(next(ipaddress.ip_network(sys.stdin.read().split()[0]).hosts()))')
say "survey PKI in $survey/pki (containers reach the host's published ports via $gateway)"
mkdir -p "$survey/pki"
"$bin/data-api" pki init --dir "$survey/pki" >/dev/null
[ -f "$survey/pki/server.pem" ] || "$bin/data-api" pki issue-server --dir "$survey/pki" \
  --host localhost --host 127.0.0.1 --host "$gateway" >/dev/null
[ -f "$survey/pki/device.pem" ] || "$bin/data-api" pki issue-device --dir "$survey/pki" \
  --email "$email" --out device >/dev/null
researcher=$(secret "$survey/pki/researcher.token")
secret "$survey/pki/admin.token" >/dev/null
# Certificates are public; keys and tokens are readable by their owner only.
chmod 0644 "$survey/pki"/ca.pem "$survey/pki"/server.pem "$survey/pki"/device.pem
chmod 0600 "$survey/pki"/*-key.pem "$survey/pki"/*.token
# What containers may bind ([SECURITY] bind_paths) is this directory only, one folder per
# service holding just what it needs: never the cluster key, the API or admin token, the
# CA key or another service's files.
binds=$survey/binds
mkdir -p "$binds/data-api/pki" "$binds/meter-reader/device"
for old in data-api-db:data-api/db meter-reader-data:meter-reader/data; do  # earlier runs' data
  if [ -d "$survey/${old%%:*}" ] && [ ! -e "$binds/${old#*:}" ]; then mv "$survey/${old%%:*}" "$binds/${old#*:}"; fi
done
mkdir -p "$binds/data-api/db" "$binds/data-api/keys" "$binds/meter-reader/data"
install -m 0644 "$survey/pki"/{ca,server}.pem "$binds/data-api/pki/"
install -m 0600 "$survey/pki"/server-key.pem "$survey/pki"/{researcher,admin}.token "$binds/data-api/pki/"
install -m 0644 "$survey/pki"/{ca,device}.pem "$binds/meter-reader/device/"
install -m 0600 "$survey/pki"/device-key.pem "$binds/meter-reader/device/"
api_token=$(secret "$survey/api-token")
admin_token=$(secret "$survey/admin-token")   # logs and exec (motey logs, motey exec)
cluster_key=$(secret "$survey/cluster-key")
meter=$( [ -s "$survey/meter-uuid" ] || python3 -c 'import uuid;print(uuid.uuid4())' > "$survey/meter-uuid"; cat "$survey/meter-uuid")

# Agents and the simulated probe run in their own sessions: Ctrl-C in the terminal reaches
# only this script, whose clean-up terminates the services before it stops the agents.
agent_pids=()
probe_pid=
motey() { curl -sS -H "Authorization: Bearer $api_token" "$@"; }
services_of() { # services_of NODE: "id name desired state" lines
  motey "http://127.0.0.1:$(rest_port "$1")/v1/services" 2>/dev/null | python3 -c 'import json,sys
for s in json.load(sys.stdin): print(s["id"], s["name"], s["desired"], s["state"])' 2>/dev/null || true
}
cleanup() {
  trap - EXIT
  say "stopping: terminating the services, then the agents"
  for i in "${!agent_pids[@]}"; do
    services_of "$i" | while read -r id _ desired _; do
      [ "$desired" = RUNNING ] && motey -X DELETE "http://127.0.0.1:$(rest_port "$i")/v1/services/$id" >/dev/null || true
    done
  done
  for _ in $(seq 1 90); do
    left=0
    for i in "${!agent_pids[@]}"; do
      left=$((left + $(services_of "$i" | awk '$4 != "TERMINATED"' | wc -l)))
    done
    [ "$left" = 0 ] && break
    sleep 1
  done
  [ -n "$probe_pid" ] && kill "$probe_pid" 2>/dev/null || true
  for (( i=${#agent_pids[@]}-1; i>=0; i-- )); do  # the broker's node last
    kill -TERM "${agent_pids[$i]}" 2>/dev/null || true
    wait "${agent_pids[$i]}" 2>/dev/null || true
  done
  say "stopped; run again to resume (state in $survey)"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_agent() { # start_agent INDEX [NAME=VALUE...]: extra settings for this start
  local i=$1 dir
  shift
  dir=$(node_dir "$i")
  mkdir -p "$dir"
  # A stable node id per node directory: the containers carry it, a rerun adopts them.
  [ -s "$dir/node-id" ] || echo "${nodes[$i]}-$(python3 -c 'import secrets;print(secrets.token_hex(4))')" > "$dir/node-id"
  local embedded=false
  [ "$i" = 0 ] && embedded=true
  MOTEY_GENERAL_DATA_DIR="$dir" MOTEY_GENERAL_NODE_ID="$(cat "$dir/node-id")" MOTEY_GENERAL_NODE_NAME="${nodes[$i]}" \
  MOTEY_WEBSERVER_IP=127.0.0.1 MOTEY_WEBSERVER_PORT="$(rest_port "$i")" MOTEY_WEBSERVER_TOKEN="$api_token" MOTEY_SECURITY_ADMIN_TOKEN="$admin_token" \
  MOTEY_MQTT_EMBEDDED=$embedded MOTEY_MQTT_IP=127.0.0.1 MOTEY_MQTT_PORT="$mqtt_port" \
  MOTEY_ZEROMQ_PEER_PORT=$((peer_port + i)) MOTEY_ZEROMQ_CAPABILITY_EVENTS="ipc://$dir/capabilities.ipc" \
  MOTEY_CLUSTER_KEY="$cluster_key" MOTEY_SECURITY_BIND_PATHS="$binds" \
  MOTEY_CLUSTER_ROLE="$( [ "$i" = 0 ] && $cluster && echo init || echo member )" \
    setsid env "$@" "$bin/motey" start >> "$survey/${nodes[$i]}.log" 2>&1 &
  agent_pids+=($!)
  local scheme=http
  case " $* " in *" MOTEY_WEBSERVER_TLS=on "*) scheme=https;; esac
  for _ in $(seq 1 60); do
    curl -sf --cacert "$dir/rest-cert.pem" "$scheme://127.0.0.1:$(rest_port "$i")/health" >/dev/null 2>&1 && return
    sleep 1
  done
  tail -20 "$survey/${nodes[$i]}.log"; exit 1
}
node_cli() { # node_cli INDEX ARGS...: the motey CLI for one node
  local i=$1 dir
  shift
  dir=$(node_dir "$i")
  mkdir -p "$dir"
  [ -s "$dir/node-id" ] || echo "${nodes[$i]}-$(python3 -c 'import secrets;print(secrets.token_hex(4))')" > "$dir/node-id"
  MOTEY_GENERAL_DATA_DIR="$dir" MOTEY_GENERAL_NODE_ID="$(cat "$dir/node-id")" \
    MOTEY_WEBSERVER_PORT="$(rest_port "$i")" "$bin/motey" "$@"
}
if $cluster; then
  # Every node its own identity: the cloud node makes the cluster CA at its first start,
  # each edge joins it with a token of its own. Joining needs the CA node's REST API over
  # HTTPS, so the cloud node serves HTTPS while the edges join, then (all on loopback
  # here) plain HTTP as the rest of this script expects.
  joining=()
  for i in "${!nodes[@]}"; do
    [ "$i" = 0 ] || [ -s "$(node_dir "$i")/cluster/node.pem" ] || joining+=("$i")
  done
  if [ ${#joining[@]} -gt 0 ] || [ ! -s "$(node_dir 0)/cluster/ca.pem" ]; then
    say "making the cluster CA on ${nodes[0]} and joining the edges"
    start_agent 0 MOTEY_WEBSERVER_TLS=on
    for i in "${joining[@]}"; do
      token=$(node_cli 0 cluster token --ttl 10m --uses 1 2>/dev/null)
      node_cli "$i" join --token "$token" --server "127.0.0.1:$(rest_port 0)"
    done
    kill -TERM "${agent_pids[0]}"; wait "${agent_pids[0]}" 2>/dev/null || true
    agent_pids=()
  fi
fi
for i in "${!nodes[@]}"; do
  say "starting node ${nodes[$i]}: REST API and web client on http://127.0.0.1:$(rest_port "$i")/"
  start_agent "$i"
done
if $cluster; then
  for _ in $(seq 1 60); do
    alive=$(motey "http://127.0.0.1:$motey_port/v1/nodes" | python3 -c 'import json,sys;print(sum(n["state"]=="alive" for n in json.load(sys.stdin)))')
    [ "$alive" -ge "${#nodes[@]}" ] && break
    sleep 1
  done
  echo "    $alive of ${#nodes[@]} nodes see each other"
fi

deploy() { # deploy NODE NAME FILLED-YAML; prints the service id (reuses a running one)
  local existing
  existing=$(services_of "$1" | awk -v n="$2" '$2 == n && $3 == "RUNNING" {print $1; exit}')
  if [ -n "$existing" ]; then echo "$existing"; return; fi
  motey -X POST -H 'content-type: application/x-yaml' --data-binary @"$3" \
    "http://127.0.0.1:$(rest_port "$1")/v1/services" | python3 -c 'import json,sys
body = json.load(sys.stdin)
if "id" not in body: sys.exit("refused: " + json.dumps(body))
print(body["id"])'
}
wait_running() { # wait_running NODE ID NAME
  local state=""
  for _ in $(seq 1 180); do
    state=$(motey "http://127.0.0.1:$(rest_port "$1")/v1/services/$2" | python3 -c 'import json,sys
s = json.load(sys.stdin)
nodes = ",".join(sorted({i.get("node") or "?" for i in s.get("images", [])}))
print(s["state"], "on", nodes, s.get("reason") or "")')
    case $state in RUNNING*) echo "    $3: $state"; return;; esac
    sleep 1
  done
  echo "    $3 did not reach RUNNING: $state" >&2; exit 1
}

say "deploying blueprints/data-api.yaml to ${nodes[0]}"
python3 - "$binds" "$api_port" "$gateway" "$report_interval" > "$survey/data-api.yaml" <<'PY'
import sys
binds, port, gateway, report = sys.argv[1:]
text = open("blueprints/data-api.yaml").read()
text = text.replace('"data-api-db:/data"', f'"{binds}/data-api/db:/data"')
text = text.replace('"data-api-pki:/pki"', f'"{binds}/data-api/pki:/pki"')
text = text.replace('"data-api-keys:/keys"', f'"{binds}/data-api/keys:/keys"')
# The script made the PKI; without the CA key in /pki nothing may be created there.
text = text.replace(', "--init-missing"]', ']')
text = text.replace('["8443:8443"]', f'["{port}:8443"]')
text = text.replace('"localhost,127.0.0.1,data-api"', f'"localhost,127.0.0.1,{gateway}"')
text = text.replace('DATA_API_REPORT_INTERVAL: "3600"', f'DATA_API_REPORT_INTERVAL: "{report}"')
print(text)
PY
api_id=$(deploy 0 data-api "$survey/data-api.yaml")
wait_running 0 "$api_id" data-api
api="https://127.0.0.1:$api_port"
for _ in $(seq 1 60); do curl -sf --cacert "$survey/pki/ca.pem" "$api/health" >/dev/null && break; sleep 1; done

if [ ! -s "$survey/household.json" ]; then
  say "registering the demo household (meter $meter) and granting its consent"
  curl -sfS --cacert "$survey/pki/ca.pem" -H "Authorization: Bearer $researcher" -H 'content-type: application/json' \
    "$api/management/household" -d '{
    "user": {"name": "Demo Household", "email": "'"$email"'"},
    "address": {"street": "Augustusplatz", "house_number": "10", "postal_code": "04109", "city": "Leipzig", "country": "DE"},
    "location": {"latitude": 51.3397, "longitude": 12.3731},
    "metadata": {"children": 1, "adults": 2, "employed_adults": 1, "ev_charger": false, "heat_pump": true, "home_battery": false},
    "measurement_devices": [{"name": "demo meter reader"}],
    "meters": [{"uuid": "'"$meter"'", "type": "ELECTRICITY", "model": "MT681"}]}' > "$survey/household.json.tmp"
  curl -sfS --cacert "$survey/pki/ca.pem" --cert "$survey/pki/device.pem" --key "$survey/pki/device-key.pem" \
    -X POST "$api/household/consent" >/dev/null
  mv "$survey/household.json.tmp" "$survey/household.json"
fi

say "simulated optical probe on tcp port $probe_port; announcing it to ${nodes[$probe_node]} as a hardware event"
setsid "$bin/meter-sim" --tcp "0.0.0.0:$probe_port" --power-swing-w 200 >> "$survey/probe.log" 2>&1 &
probe_pid=$!
for _ in $(seq 1 30); do (exec 3<>"/dev/tcp/127.0.0.1/$probe_port") 2>/dev/null && break; sleep 0.5; done
MOTEY_GENERAL_DATA_DIR="$(node_dir "$probe_node")" \
  MOTEY_ZEROMQ_CAPABILITY_EVENTS="ipc://$(node_dir "$probe_node")/capabilities.ipc" \
  "$bin/motey" capability add optical-probe --type hardware

say "deploying blueprints/meter-reader.yaml to ${nodes[$reader_owner]}"
python3 - "$binds" "$meter" "$gateway" "$probe_port" "$api_port" "$measurement_interval" "$report_interval" "$device_port" \
  > "$survey/meter-reader.yaml" <<'PY'
import re, sys
binds, meter, gateway, probe, api, measure, report, device_port = sys.argv[1:]
text = open("blueprints/meter-reader.yaml").read()
def env(key, value):
    global text
    text = re.sub(rf'({key}: ).*', lambda m: f'{m.group(1)}"{value}"', text)
env("METER_READER_METERS", f"{meter}=tcp://{gateway}:{probe}?model=MT681")
env("METER_READER_API_URL", f"https://{gateway}:{api}")
env("METER_READER_MEASUREMENT_INTERVAL", measure)
env("METER_READER_REPORT_INTERVAL", report)
text = re.sub(r'\n\s*devices: \[[^\]]*\]', '', text)  # the probe is networked here
text = text.replace('"/etc/energiebroker:/etc/energiebroker:ro"', f'"{binds}/meter-reader/device:/etc/energiebroker:ro"')
text = text.replace('"meter-reader-data:/data"', f'"{binds}/meter-reader/data:/data"')
text = text.replace('["8080:8080"]', f'["{device_port}:8080"]')
print(text)
PY
reader_id=$(deploy "$reader_owner" meter-reader "$survey/meter-reader.yaml")
wait_running "$reader_owner" "$reader_id" meter-reader

cat <<INFO

The survey runs on ${#nodes[@]} node(s).
  web client:       http://127.0.0.1:$motey_port/   (API token in $survey/api-token, admin token in $survey/admin-token)
  device frontend:  http://127.0.0.1:$device_port/
  Data API:         $api  (CA $survey/pki/ca.pem, researcher token in $survey/pki/researcher.token)
  survey frontends: $api/ui/  (registration and device status; sign in with the researcher or the admin token)
  measurements:     every ${measurement_interval}s, uploaded every ${report_interval}s
  logs:             $survey/*.log
Ctrl-C stops everything.
INFO
while true; do
  curl -sf --cacert "$survey/pki/ca.pem" -H "Authorization: Bearer $researcher" \
    "$api/management/export/measurements?format=jsonl" 2>/dev/null | python3 -c 'import sys
rows = [l for l in sys.stdin if l.strip()]
print(f"    {len(rows)} measurement(s) stored in the Data API" + (f"; latest: {rows[-1].strip()[:160]}" if rows else ""), flush=True)' || true
  sleep 15 & wait $!   # a trap runs at once, not after the sleep
done
