# bench/lib.sh — what bench/run, bench/cpu-split and bench/profile share: the bench certificate, the
# nginx config and the wasmgate config (the seed's vhost in each proxy's terms) and the plugin chains.
# Sourced, not run. Expects TMP (a scratch dir) and PB (the port base); sets the P_* ports and CERTS.
# shellcheck shell=bash

TOKEN="bench-token-0123456789abcdef"
AUTH="Authorization: Bearer $TOKEN"

P_BACKEND=$PB
P_APACHE=$((PB + 1)); P_APACHE_TLS=$((PB + 2))
P_NGINX=$((PB + 3)); P_NGINX_TLS=$((PB + 4))
P_WG=$((PB + 5)); P_WG_TLS=$((PB + 6))
# PB + 7 and + 8: bench/cpu-split's second wasmgate (the seed chain).
P_HAPROXY=$((PB + 9)); P_HAPROXY_TLS=$((PB + 10))
P_NGINX_NOLOG=$((PB + 11))
CERTS="$TMP/certs"

# make_certs: an RSA-2048 CA and a server certificate for bench.local / localhost / 127.0.0.1 in CERTS,
# with an RSA-2048 key (or ECDSA P-256 with BENCH_CERT=ecdsa).
make_certs() {
    mkdir -p "$CERTS"
    local key=(-newkey rsa:2048)
    [[ ${BENCH_CERT:-rsa} == ecdsa ]] && key=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
    (
        cd "$CERTS"
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=wasmgate bench CA" \
            -keyout ca.key -out ca.crt 2>/dev/null
        openssl req "${key[@]}" -nodes -subj "/CN=bench.local" -keyout server.key -out server.csr 2>/dev/null
        printf 'subjectAltName=DNS:bench.local,DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >ext.cnf
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf \
            -out server.crt 2>/dev/null
        cat server.crt server.key >server.pem # HAProxy wants both in one file
        chmod 644 ./*
    )
}

# write_nginx_conf: $TMP/nginx.conf, 2 workers, keep-alive upstream, plain on P_NGINX and TLS on
# P_NGINX_TLS with an access line per request; the same vhost without an access log on P_NGINX_NOLOG.
write_nginx_conf() {
    mkdir -p "$TMP/nginx"
    # The seed's vhost in nginx terms: Host preserved, X-Forwarded-* like Apache's mod_proxy adds.
    cat >"$TMP/nginx-vhost.conf" <<EOF
server_name bench.local;
proxy_set_header Host \$host;
proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
proxy_set_header X-Forwarded-Proto \$scheme;
proxy_set_header X-Forwarded-Host \$host;
location / {
    proxy_pass http://backend;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
}
location /socket {
    proxy_pass http://backend;
    proxy_http_version 1.1;
    proxy_set_header Upgrade \$http_upgrade;
    proxy_set_header Connection \$connection_upgrade;
    proxy_read_timeout 3600s;
    proxy_send_timeout 3600s;
}
EOF
    cat >"$TMP/nginx.conf" <<EOF
worker_processes 2;
worker_rlimit_nofile 65536;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 8192; }
http {
    access_log $TMP/nginx-access.log combined;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    keepalive_requests 1000000;
    map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
    upstream backend {
        server 127.0.0.1:$P_BACKEND;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$P_NGINX;
        listen 127.0.0.1:$P_NGINX_TLS ssl;
        ssl_certificate $CERTS/server.crt;
        ssl_certificate_key $CERTS/server.key;
        include $TMP/nginx-vhost.conf;
    }
    server {
        listen 127.0.0.1:$P_NGINX_NOLOG;
        access_log off;
        include $TMP/nginx-vhost.conf;
    }
}
EOF
}

# write_haproxy_conf: $TMP/haproxy.cfg, the same vhost for HAProxy (2 threads, connection reuse to
# the backend, an access line per request to its stdout), plain on P_HAPROXY and TLS on P_HAPROXY_TLS.
write_haproxy_conf() {
    cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 2
    # Debian's HAProxy cannot raise the descriptor limit past about 8000 here.
    maxconn 4000
    pidfile $TMP/haproxy.pid
    log stdout format raw local0 info
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    log global
    option httplog
    http-reuse always
    timeout connect 5s
    timeout client 3600s
    timeout server 3600s
    timeout tunnel 3600s
frontend bench
    bind 127.0.0.1:$P_HAPROXY
    bind 127.0.0.1:$P_HAPROXY_TLS ssl crt $CERTS/server.pem
    # The seed's vhost: Host preserved (HAProxy's default), X-Forwarded-* as Apache's mod_proxy adds.
    option forwardfor
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    default_backend backend
backend backend
    server b1 127.0.0.1:$P_BACKEND
EOF
}

# write_wasmgate_conf FILE PLUGINS [HTTP_PORT TLS_PORT]: the seed's vhost in wasmgate terms (default
# ports P_WG and P_WG_TLS); PLUGINS go on both routes. Give each config a directory of its own:
# wasmgate watches it, and a log written there would wake the watcher per line.
write_wasmgate_conf() {
    local plugins=$2 http=${3:-$P_WG} tls=${4:-$P_WG_TLS}
    cat >"$1" <<EOF
cache_dir = "$TMP/wasmgate-cache"

[[listener]]
name = "web"
bind = "127.0.0.1:$http"

[[listener]]
name = "tls"
bind = "127.0.0.1:$tls"
tls = true

[[site]]
name = "bench"
listeners = ["web", "tls"]
hosts = ["bench.local"]
default = true
tls = { cert = "$CERTS/server.crt", key = "$CERTS/server.key" }
preserve_host = true
timeout = "3600s"

[[site.route]]
path = "/"
backend = "http://127.0.0.1:$P_BACKEND/"
reverse = true
$plugins

[[site.route]]
path = "/socket"
backend = "ws://127.0.0.1:$P_BACKEND/socket"
$plugins
EOF
}

# Plugin chains, per route (TOML array-of-tables under the route just written).
PLUGIN_TOKEN='
[[site.route.plugin]]
builtin = "token-auth"
config = { tokens = ["'$TOKEN'"] }
'
PLUGIN_HEADERS='
[[site.route.plugin]]
builtin = "headers"
config.request = { set = { "x-real-ip" = "{client_addr}" } }
config.response = { set = { "strict-transport-security" = "max-age=63072000", "x-frame-options" = "DENY" } }
'
PLUGIN_IP='
[[site.route.plugin]]
builtin = "ip-allow"
config = { allow = ["127.0.0.0/8", "::1/128"] }
'
# The seed's chain: token-auth, then header rewriting.
SEED_CHAIN="$PLUGIN_TOKEN$PLUGIN_HEADERS"
