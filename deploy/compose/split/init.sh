#!/bin/sh
# Makes what `docker compose up` needs in this directory and git leaves out:
#   .env    the deployment's secrets, random (openssl rand -hex)
#   certs/  a self-signed certificate for nginx (fullchain.pem, privkey.pem)
# Each is made only when missing: an existing .env or certificate is never
# replaced, so running this again changes nothing.
#
#   ./init.sh [HOSTNAME]    HOSTNAME names the certificate (default localhost)
set -eu
cd "$(dirname "$0")"
umask 077
host=${1:-localhost}

if [ ! -e .env ]; then
    rand() { openssl rand -hex "$1"; }
    cat > .env.new <<SECRETS
# Secrets of this aiproxy deployment, made by init.sh. Keep a copy with every
# database backup: AIPROXY_SECRET_KEY decrypts the upstream credentials stored
# in the database, and without it a backup cannot be used.
COMPOSE_PROJECT_NAME=aiproxy
MARIADB_PASSWORD=$(rand 24)
MARIADB_ROOT_PASSWORD=$(rand 24)
AIPROXY_SECRET_KEY=$(rand 32)
AIPROXY_NODE_TOKEN=$(rand 32)
AIPROXY_ADMIN_TOKEN=$(rand 32)
# Password of the console's \`admin\` user, set on the first start only.
AIPROXY_ADMIN_PASSWORD=$(rand 12)
SECRETS
    mv .env.new .env
    echo "init.sh: wrote .env (the console's admin password is AIPROXY_ADMIN_PASSWORD there)"
fi

if [ ! -e certs/fullchain.pem ] && [ ! -e certs/privkey.pem ]; then
    mkdir -p certs
    chmod 755 certs
    names="DNS:localhost,IP:127.0.0.1"
    [ "$host" = localhost ] || names="DNS:$host,$names"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 -nodes -days 825 \
        -subj "/CN=$host" -addext "subjectAltName=$names" \
        -keyout certs/privkey.pem.new -out certs/fullchain.pem.new 2>/dev/null
    # The certificate is public; the key stays readable by its owner only.
    chmod 644 certs/fullchain.pem.new
    mv certs/privkey.pem.new certs/privkey.pem
    mv certs/fullchain.pem.new certs/fullchain.pem
    echo "init.sh: wrote a self-signed certificate for $host in certs/"
elif [ ! -e certs/fullchain.pem ] || [ ! -e certs/privkey.pem ]; then
    echo "init.sh: certs/ has only one of fullchain.pem and privkey.pem; add the other" >&2
    exit 1
fi
