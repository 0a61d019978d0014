# Shell functions shared by `make up`, the benchmarks and .ci/run: uv, Debian packages, and local
# PostgreSQL and RabbitMQ.
# Source it from the repository root; each function prints what it does and fails loudly.

: "${MAILFLEET_POSTGRES__DSN:=postgresql://postgres@127.0.0.1:5432/mailfleet}"
: "${MAILFLEET_RABBIT__URL:=amqp://guest:guest@127.0.0.1:5672/}"
export MAILFLEET_POSTGRES__DSN MAILFLEET_RABBIT__URL

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# host and port of a URL such as postgresql://user@host:5432/db (defaults: 127.0.0.1, $2)
url_host() { local rest=${1#*://}; rest=${rest#*@}; rest=${rest%%/*}; echo "${rest%%:*}"; }
url_port() {
  local rest=${1#*://}; rest=${rest#*@}; rest=${rest%%/*}
  if [[ $rest == *:* ]]; then echo "${rest##*:}"; else echo "$2"; fi
}
is_local() { [[ $1 == 127.0.0.1 || $1 == localhost || $1 == ::1 ]]; }

# True when something accepts TCP connections on host:port.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {  # host port seconds what
  local deadline=$((SECONDS + $3))
  until port_open "$1" "$2"; do
    ((SECONDS < deadline)) || die "$4 is not accepting connections on $1:$2 after $3 s"
    sleep 0.5
  done
}

# Debian packages, installed with apt-get (as root); the package index is refreshed once.
apt_updated=
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "$* missing and no apt-get to install it"
  if [[ -z $apt_updated ]]; then apt-get update -qq; apt_updated=1; fi
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# A command, installed from the Debian package of the same name when missing.
ensure_command() { command -v "$1" >/dev/null 2>&1 || apt_install "$1"; }

ensure_uv() {
  if ! command -v uv >/dev/null 2>&1; then
    say "installing uv (pip install uv)"
    python3 -m pip install --quiet uv 2>/dev/null \
      || python3 -m pip install --quiet --break-system-packages uv \
      || die "could not install uv; see https://docs.astral.sh/uv/"
    hash -r
    command -v uv >/dev/null 2>&1 || die "uv was installed but is not on PATH"
  fi
}

# Starts the local PostgreSQL cluster when the DSN points at this machine and nothing answers.
ensure_postgres() {
  local host port
  host=$(url_host "$MAILFLEET_POSTGRES__DSN"); port=$(url_port "$MAILFLEET_POSTGRES__DSN" 5432)
  port_open "$host" "$port" && return 0
  is_local "$host" || die "PostgreSQL at $host:$port does not answer (MAILFLEET_POSTGRES__DSN)"
  command -v pg_ctlcluster >/dev/null 2>&1 && [[ -d /etc/postgresql ]] \
    || die "PostgreSQL is not installed here: install it, or set MAILFLEET_POSTGRES__DSN"
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  say "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  [[ -n ${RUN_DIR:-} ]] && echo "$version" >"$RUN_DIR/started-postgresql"
  wait_port "$host" "$port" 60 PostgreSQL
}

# Starts the local RabbitMQ broker when the URL points at this machine and nothing answers.
ensure_rabbitmq() {
  local host port
  host=$(url_host "$MAILFLEET_RABBIT__URL"); port=$(url_port "$MAILFLEET_RABBIT__URL" 5672)
  port_open "$host" "$port" && return 0
  is_local "$host" || die "RabbitMQ at $host:$port does not answer (MAILFLEET_RABBIT__URL)"
  command -v rabbitmq-server >/dev/null 2>&1 \
    || die "RabbitMQ is not installed here: install it, or set MAILFLEET_RABBIT__URL"
  say "starting RabbitMQ"
  rabbitmq-server -detached
  [[ -n ${RUN_DIR:-} ]] && touch "$RUN_DIR/started-rabbitmq"
  timeout 120 rabbitmqctl await_startup >/dev/null || die "RabbitMQ did not start"
  wait_port "$host" "$port" 60 RabbitMQ
}
