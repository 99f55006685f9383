#!/usr/bin/env bash
# Loadgen run: release jitsudod over TLS on PostgreSQL, the dev issuer alone, pgbench baseline.
set -euo pipefail
B=${JITSUDO_BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
D=${WORKDIR:-$(mktemp -d)}
rm -rf $D/certs $D/issuer $D/audit.pem
$B/jitsudod certs --out $D/certs >/dev/null
$B/jitsudod audit-key --out $D/audit.pem >/dev/null
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS jitsudo_loadgen" -c "CREATE DATABASE jitsudo_loadgen" -c "DROP DATABASE IF EXISTS jitsudo_pgbench" -c "CREATE DATABASE jitsudo_pgbench"
cat > $D/jitsudod.toml <<TOML
[server]
listen = "127.0.0.1:18643"
tls_cert = "$D/certs/server.pem"
tls_key = "$D/certs/server-key.pem"
[database]
url = "postgres://postgres@127.0.0.1:5432/jitsudo_loadgen"
[auth]
issuer = "http://127.0.0.1:18600/dev/oidc"
audience = "jitsudo"
[audit]
signing_key = "$D/audit.pem"
[limits]
# One load-generating user makes thousands of requests: lift the per-person limits.
mutations_per_minute = 0
max_live_requests_per_principal = 0
[[providers]]
name = "demo"
kind = "demo"
TOML
$B/jitsudo-test-issuer --listen 127.0.0.1:18600 --dir $D/issuer > $D/issuer.log 2>&1 &
ISS=$!
JITSUDOD_LOG=warn $B/jitsudod --config $D/jitsudod.toml > $D/server.log 2>&1 &
SRV=$!
trap 'kill $SRV $ISS 2>/dev/null || true' EXIT
sleep 3
CAROL=$(curl -s -d username=carol http://127.0.0.1:18600/dev/oidc/token | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
for f in $(cd "$(dirname "$0")/../.." && pwd)/cluster-config/dev/policies/*.rego; do
  n=$(basename $f .rego)
  python3 -c 'import json,sys; print(json.dumps({"rego": open(sys.argv[1]).read()}))' $f \
    | curl -s --cacert $D/certs/ca.pem -H "Authorization: Bearer $CAROL" -X PUT --data-binary @- https://localhost:18643/api/v1/policies/$n > /dev/null
done
LG="$B/jitsudo-loadgen --server https://127.0.0.1:18643 --ca-cert $D/certs/ca.pem --dev-issuer http://127.0.0.1:18600/dev/oidc --server-pid $SRV"
echo "=== throughput, 16 clients"
$LG --clients 16 --seconds 20 --pgbench-url postgres://postgres@127.0.0.1:5432/jitsudo_pgbench
echo "=== throughput, 4 clients"
$LG --clients 4 --seconds 15
echo "=== throughput, 2 clients"
$LG --clients 2 --seconds 15
echo "=== expiry, 8 clients, 2-second requests"
$LG --mode expiry --duration-seconds 2 --clients 8 --seconds 20
