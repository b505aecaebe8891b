#!/usr/bin/env bash
# Make sure the PostgreSQL *server* binaries (initdb, pg_ctl) are present,
# because `make dev`, `make test` and `make bench` start throwaway clusters
# from them (server/controlplane_resolver/localpg.py).
#
# Looks where localpg looks: $PG_BINDIR, PATH, `pg_config --bindir`, then
# Debian's /usr/lib/postgresql/*/bin. When none has them and we are root on
# Debian/Ubuntu, installs the `postgresql` package with apt; otherwise prints
# how to install them and exits 1. Exits 0 when the binaries are usable.
#
# As root, localpg runs the server as the `postgres` OS user (PostgreSQL
# refuses root), so that user must exist too; the Debian package creates it.
set -euo pipefail

# 0 when $1 holds both initdb and pg_ctl.
has_server_binaries_in() {
    [ -n "$1" ] && [ -x "$1/initdb" ] && [ -x "$1/pg_ctl" ]
}

find_bindir() {
    local dir
    if has_server_binaries_in "${PG_BINDIR:-}"; then echo "$PG_BINDIR"; return 0; fi
    if command -v initdb >/dev/null 2>&1; then
        dir=$(dirname "$(command -v initdb)")
        if has_server_binaries_in "$dir"; then echo "$dir"; return 0; fi
    fi
    # pg_config alone is not enough: libpq-dev ships it without a server.
    if command -v pg_config >/dev/null 2>&1; then
        dir=$(pg_config --bindir 2>/dev/null || true)
        if has_server_binaries_in "$dir"; then echo "$dir"; return 0; fi
    fi
    for dir in /usr/lib/postgresql/*/bin; do
        if has_server_binaries_in "$dir"; then echo "$dir"; return 0; fi
    done
    return 1
}

hint() {
    cat >&2 <<'EOF'
PostgreSQL server binaries (initdb, pg_ctl) were not found. Install them:
  Debian/Ubuntu:  sudo apt-get install -y postgresql
  Fedora/RHEL:    sudo dnf install -y postgresql-server
  macOS:          brew install postgresql
or set PG_BINDIR to the directory that holds initdb and pg_ctl.
EOF
}

if ! bindir=$(find_bindir); then
    if [ "$(id -u)" -eq 0 ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; then
        echo "ensure-postgres: server binaries missing; installing the postgresql package with apt"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends postgresql >/dev/null
        if ! bindir=$(find_bindir); then
            echo "ensure-postgres: apt installed postgresql but initdb/pg_ctl are still missing" >&2
            hint
            exit 1
        fi
    else
        hint
        exit 1
    fi
fi

if [ "$(id -u)" -eq 0 ] && ! id -u postgres >/dev/null 2>&1; then
    # Binaries from somewhere other than the Debian package (which creates
    # this user): localpg still needs a non-root user to run them as.
    echo "ensure-postgres: creating the 'postgres' system user (PostgreSQL refuses to run as root)"
    useradd --system --user-group --no-create-home --shell /usr/sbin/nologin postgres
fi

echo "ensure-postgres: $("$bindir/initdb" --version) in $bindir"
