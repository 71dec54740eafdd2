#!/bin/sh
# Container HEALTHCHECK for aemp-gateway: exit 0 when GET /healthz answers 2xx.
#
# Derives the URL from the gateway's own environment (AEMP_GATEWAY_HTTP, AEMP_GATEWAY_TLS_CERT);
# a wildcard listen address is probed on loopback. If the gateway is configured by flags or by a
# --config file instead, set AEMP_GATEWAY_HEALTHCHECK_URL (e.g. https://127.0.0.1:8443/healthz).
set -eu
url=${AEMP_GATEWAY_HEALTHCHECK_URL:-}
if [ -z "$url" ]; then
    address=${AEMP_GATEWAY_HTTP:-127.0.0.1:8080}
    port=${address##*:}
    host=${address%:*}
    case $host in
        0.0.0.0 | '*' | '') host=127.0.0.1 ;;
        '[::]') host='[::1]' ;;
    esac
    scheme=http
    if [ -n "${AEMP_GATEWAY_TLS_CERT:-}" ]; then scheme=https; fi
    url="$scheme://$host:$port/healthz"
fi
# -k: the certificate names the public host, not 127.0.0.1; this only checks liveness.
exec curl --fail --silent --show-error --insecure --noproxy '*' --max-time 4 --output /dev/null "$url"
