#!/usr/bin/env bash
# The main job: runs the EnergieBroker metering survey on one Motey agent.
#
#   scripts/run-survey.sh          start (or resume) the survey; Ctrl-C stops it cleanly
#
# It builds the workload images, creates the survey PKI and a demo household (kept in
# .survey/ and reused on the next run), starts an agent with embedded defaults (embedded
# MQTT broker, sled store), starts the simulated optical probe and announces it to the
# agent as a hardware event, deploys blueprints/data-api.yaml and
# blueprints/meter-reader.yaml through the agent's REST API, and shows measurements
# arriving in the Data API. Settings (environment): SURVEY_DIR, MOTEY_PORT (5023),
# DATA_API_PORT (8443), PROBE_PORT (7070), MEASUREMENT_INTERVAL (60 s), REPORT_INTERVAL (120 s).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
survey=${SURVEY_DIR:-$root/.survey}
motey_port=${MOTEY_PORT:-5023}
api_port=${DATA_API_PORT:-8443}
probe_port=${PROBE_PORT:-7070}
measurement_interval=${MEASUREMENT_INTERVAL:-60}
report_interval=${REPORT_INTERVAL:-120}
email=household@survey.example
mkdir -p "$survey/pki" "$survey/agent"

say() { printf '\n==> %s\n' "$*"; }

say "building the agent and the workload images"
scripts/build-images.sh meter-reader data-api
cargo build --release -p motey -p meter-reader -p data-api
bin=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')/release

gateway=$(docker network inspect bridge -f '{{(index .IPAM.Config 0).Gateway}}')
say "survey PKI in $survey/pki (the Data API and the device reach each other via $gateway)"
"$bin/data-api" pki init --dir "$survey/pki" >/dev/null
[ -f "$survey/pki/server.pem" ] || "$bin/data-api" pki issue-server --dir "$survey/pki" \
  --host localhost --host 127.0.0.1 --host "$gateway" >/dev/null
[ -f "$survey/pki/device.pem" ] || "$bin/data-api" pki issue-device --dir "$survey/pki" \
  --email "$email" --out device >/dev/null
for role in researcher admin; do
  [ -s "$survey/pki/$role.token" ] || python3 -c 'import secrets;print(secrets.token_hex(24))' > "$survey/pki/$role.token"
done
chmod 0644 "$survey/pki"/*.pem "$survey/pki"/*.token  # read by the workloads' users
researcher=$(cat "$survey/pki/researcher.token")
api_token=$(cat "$survey/agent/api-token" 2>/dev/null || python3 -c 'import secrets;print(secrets.token_hex(16))')
echo "$api_token" > "$survey/agent/api-token"; chmod 0600 "$survey/agent/api-token"

say "starting the agent (REST API and web client on http://127.0.0.1:$motey_port/)"
export MOTEY_GENERAL_DATA_DIR="$survey/agent" MOTEY_WEBSERVER_PORT=$motey_port \
  MOTEY_SECURITY_BIND_PATHS="$survey" MOTEY_ZEROMQ_CAPABILITY_EVENTS="ipc://$survey/agent/capabilities.ipc"
"$bin/motey" start > "$survey/agent.log" 2>&1 &
agent_pid=$!
probe_pid=
motey() { curl -sS -H "Authorization: Bearer $api_token" "$@"; }
cleanup() {
  trap - INT TERM EXIT
  say "stopping: terminating the services, then the agent"
  for id in $(motey "http://127.0.0.1:$motey_port/v1/services" 2>/dev/null | python3 -c 'import json,sys
for s in json.load(sys.stdin):
    if s["desired"] == "RUNNING": print(s["id"])' 2>/dev/null); do
    motey -X DELETE "http://127.0.0.1:$motey_port/v1/services/$id" >/dev/null || true
  done
  for _ in $(seq 1 60); do
    left=$(motey "http://127.0.0.1:$motey_port/v1/services" 2>/dev/null | python3 -c 'import json,sys;print(sum(s["state"]!="TERMINATED" for s in json.load(sys.stdin)))' 2>/dev/null || echo 0)
    [ "$left" = 0 ] && break
    sleep 1
  done
  [ -n "$probe_pid" ] && kill "$probe_pid" 2>/dev/null || true
  kill -TERM "$agent_pid" 2>/dev/null || true
  wait "$agent_pid" 2>/dev/null || true
  say "stopped; run again to resume (state in $survey)"
}
trap cleanup INT TERM EXIT
for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$motey_port/health" >/dev/null && break; sleep 1; done
curl -sf "http://127.0.0.1:$motey_port/health" >/dev/null || { tail -20 "$survey/agent.log"; exit 1; }

# Blueprints from the repository, filled in for this machine (paths, addresses, meter).
deploy() { # deploy NAME FILLED-YAML; prints the service id (reuses a running one)
  local existing
  existing=$(motey "http://127.0.0.1:$motey_port/v1/services" | python3 -c 'import json,sys
for s in json.load(sys.stdin):
    if s["name"] == sys.argv[1] and s["desired"] == "RUNNING": print(s["id"]); break' "$1")
  if [ -n "$existing" ]; then echo "$existing"; return; fi
  motey -X POST -H 'content-type: application/x-yaml' --data-binary @"$2" \
    "http://127.0.0.1:$motey_port/v1/services" | python3 -c 'import json,sys
body = json.load(sys.stdin)
if "id" not in body: sys.exit("refused: " + json.dumps(body))
print(body["id"])'
}
wait_running() { # wait_running ID NAME
  for _ in $(seq 1 180); do
    state=$(motey "http://127.0.0.1:$motey_port/v1/services/$1" | python3 -c 'import json,sys;s=json.load(sys.stdin);print(s["state"], s.get("reason") or "")')
    case $state in RUNNING*) echo "    $2: RUNNING"; return;; esac
    sleep 1
  done
  echo "    $2 did not reach RUNNING: $state" >&2; exit 1
}

say "deploying blueprints/data-api.yaml"
python3 - "$survey" "$api_port" "$report_interval" > "$survey/data-api.yaml" <<'PY'
import sys
survey, port, report = sys.argv[1:]
text = open("blueprints/data-api.yaml").read()
text = text.replace('"data-api-pki:/pki"', f'"{survey}/pki:/pki"')
text = text.replace('["8443:8443"]', f'["{port}:8443"]')
text = text.replace('DATA_API_REPORT_INTERVAL: "3600"', f'DATA_API_REPORT_INTERVAL: "{report}"')
print(text)
PY
api_id=$(deploy data-api "$survey/data-api.yaml")
wait_running "$api_id" data-api
api="https://127.0.0.1:$api_port"
for _ in $(seq 1 60); do curl -sf --cacert "$survey/pki/ca.pem" "$api/health" >/dev/null && break; sleep 1; done

if [ ! -s "$survey/household.json" ]; then
  say "registering the demo household"
  curl -sfS --cacert "$survey/pki/ca.pem" -H "Authorization: Bearer $researcher" -H 'content-type: application/json' \
    "$api/management/household" -d '{
    "user": {"name": "Demo Household", "email": "'"$email"'"},
    "address": {"street": "Augustusplatz", "house_number": "10", "postal_code": "04109", "city": "Leipzig", "country": "DE"},
    "location": {"latitude": 51.3397, "longitude": 12.3731},
    "metadata": {"children": 1, "adults": 2, "employed_adults": 1, "ev_charger": false, "heat_pump": true, "home_battery": false},
    "meters": [{"type": "ELECTRICITY", "model": "MT681"}]}' > "$survey/household.json"
  curl -sS --cacert "$survey/pki/ca.pem" --cert "$survey/pki/device.pem" --key "$survey/pki/device-key.pem" \
    -X POST "$api/household/consent" >/dev/null
fi
meter=$(python3 -c 'import json,sys
h = json.load(open(sys.argv[1]))
def find(o):
    if isinstance(o, dict):
        for k, v in o.items():
            if k == "meters" and isinstance(v, list) and v:
                m = v[0]; return m.get("uuid") or m.get("id") if isinstance(m, dict) else m
            r = find(v)
            if r: return r
    if isinstance(o, list):
        for v in o:
            r = find(v)
            if r: return r
print(find(h))' "$survey/household.json")

say "simulated optical probe on tcp port $probe_port; announcing it as a hardware event"
"$bin/meter-sim" --tcp "0.0.0.0:$probe_port" --power-swing-w 200 > "$survey/probe.log" 2>&1 &
probe_pid=$!
sleep 1
"$bin/motey" capability add optical-probe --type hardware

say "deploying blueprints/meter-reader.yaml"
python3 - "$survey" "$meter" "$gateway" "$probe_port" "$api_port" "$measurement_interval" "$report_interval" \
  > "$survey/meter-reader.yaml" <<'PY'
import re, sys
survey, meter, gateway, probe, api, measure, report = sys.argv[1:]
text = open("blueprints/meter-reader.yaml").read()
def env(key, value):
    global text
    text = re.sub(rf'({key}: ).*', lambda m: f'{m.group(1)}"{value}"', text)
env("METER_READER_METERS", f"{meter}=tcp://{gateway}:{probe}?model=MT681")
env("METER_READER_API_URL", f"https://{gateway}:{api}")
env("METER_READER_MEASUREMENT_INTERVAL", measure)
env("METER_READER_REPORT_INTERVAL", report)
text = re.sub(r'\n\s*devices: \[[^\]]*\]', '', text)  # the probe is networked here
text = text.replace('"/etc/energiebroker:/etc/energiebroker:ro"', f'"{survey}/pki:/etc/energiebroker:ro"')
print(text)
PY
reader_id=$(deploy meter-reader "$survey/meter-reader.yaml")
wait_running "$reader_id" meter-reader

cat <<INFO

The survey runs.
  web client:     http://127.0.0.1:$motey_port/   (API token: $api_token)
  Data API:       $api  (CA $survey/pki/ca.pem, researcher token in $survey/pki/researcher.token)
  registration and device status: $api/ui/  (sign in with the researcher or the admin token)
  measurements:   every ${measurement_interval}s, uploaded every ${report_interval}s
Ctrl-C stops everything.
INFO
while true; do
  sleep 15
  curl -sf --cacert "$survey/pki/ca.pem" -H "Authorization: Bearer $researcher" \
    "$api/management/export/measurements?format=jsonl" 2>/dev/null | python3 -c 'import sys
rows = [l for l in sys.stdin if l.strip()]
print(f"    {len(rows)} measurement(s) stored in the Data API" + (f"; latest: {rows[-1].strip()[:160]}" if rows else ""))' || true
done
