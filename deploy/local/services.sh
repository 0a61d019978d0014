# Shell functions shared by `make up`, the benchmarks and .ci/run: uv, Debian packages, and local
# PostgreSQL, RabbitMQ and Redis.
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

# A command run as root: directly when root already, else through sudo.
as_root() {
  if ((EUID == 0)); then "$@"; return; fi
  command -v sudo >/dev/null 2>&1 || die "$1 needs root: run as root, or install sudo"
  sudo "$@"
}

# Debian packages, installed with apt-get (as root); the package index is refreshed once.
apt_updated=
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "$* missing and no apt-get to install it"
  if [[ -z $apt_updated ]]; then as_root apt-get update -qq; apt_updated=1; fi
  say "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
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

# PostgreSQL from the OS packages, for a DSN on this machine (the default) where none is
# installed. The default DSN connects as postgres over TCP without a password, so local TCP
# connections of the postgres role are trusted, as for a developer's own machine.
install_postgres() {
  apt_install postgresql
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  [[ -n $version ]] || die "postgresql was installed but /etc/postgresql holds no cluster"
  as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' \
    "/etc/postgresql/$version/main/pg_hba.conf"
  # The package may have started the cluster already: make it read the new rule.
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>/dev/null || true
}

# Starts the local PostgreSQL cluster when the DSN points at this machine and nothing answers.
ensure_postgres() {
  local host port
  host=$(url_host "$MAILFLEET_POSTGRES__DSN"); port=$(url_port "$MAILFLEET_POSTGRES__DSN" 5432)
  port_open "$host" "$port" && return 0
  is_local "$host" || die "PostgreSQL at $host:$port does not answer (MAILFLEET_POSTGRES__DSN)"
  command -v pg_ctlcluster >/dev/null 2>&1 && [[ -d /etc/postgresql ]] || install_postgres
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  port_open "$host" "$port" && return 0  # the package may have started its cluster
  say "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  [[ -n ${RUN_DIR:-} ]] && echo "$version" >"$RUN_DIR/started-postgresql"
  wait_port "$host" "$port" 60 PostgreSQL
}

# Starts the local RabbitMQ broker when the URL points at this machine and nothing answers.
ensure_rabbitmq() {
  local host port
  host=$(url_host "$MAILFLEET_RABBIT__URL"); port=$(url_port "$MAILFLEET_RABBIT__URL" 5672)
  port_open "$host" "$port" && return 0
  is_local "$host" || die "RabbitMQ at $host:$port does not answer (MAILFLEET_RABBIT__URL)"
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    apt_install rabbitmq-server
    hash -r
    # The package may have started the broker itself.
    if timeout 60 rabbitmqctl await_startup >/dev/null 2>&1; then
      wait_port "$host" "$port" 60 RabbitMQ
      return 0
    fi
  fi
  say "starting RabbitMQ"
  rabbitmq-server -detached
  [[ -n ${RUN_DIR:-} ]] && touch "$RUN_DIR/started-rabbitmq"
  timeout 120 rabbitmqctl await_startup >/dev/null || die "RabbitMQ did not start"
  wait_port "$host" "$port" 60 RabbitMQ
}

# Starts a local Redis (the API's login throttle) when the URL points at this machine and nothing
# answers; installs redis-server first if missing. Without persistence: it holds only counts.
ensure_redis() {
  local url=${MAILFLEET_THROTTLE__STORAGE_URL:-redis://127.0.0.1:6379/0} host port
  host=$(url_host "$url"); port=$(url_port "$url" 6379)
  port_open "$host" "$port" && return 0
  is_local "$host" || die "Redis at $host:$port does not answer (MAILFLEET_THROTTLE__STORAGE_URL)"
  if ! have_daemon redis-server; then
    apt_install redis-server
    # The package may start a system-wide server on the default port itself.
    sleep 1
    port_open "$host" "$port" && return 0
  fi
  say "starting Redis on port $port"
  PATH="$PATH:/usr/sbin:/sbin" redis-server --bind 127.0.0.1 --port "$port" --daemonize yes \
    --save '' --appendonly no --logfile "${RUN_DIR:-/tmp}/redis.log" >/dev/null
  [[ -n ${RUN_DIR:-} ]] && echo "$port" >"$RUN_DIR/started-redis"
  wait_port "$host" "$port" 30 Redis
}

# A daemon's command, looked up in the sbin directories too (absent from most users' PATH).
have_daemon() { PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1; }

# A system-wide daemon that a package installation may have started: stopped, and kept from
# starting at boot. The bouncer tests run their own Dovecot and Postfix (tests/bouncer/servers.py)
# on free ports; an idle system-wide one would only hold ports such as 25 and 143.
stop_system_daemon() {
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    # The socket first: it would start the service again (dovecot.socket listens on 143).
    systemctl disable --now "$1.socket" >/dev/null 2>&1 || true
    systemctl disable --now "$1.service" >/dev/null 2>&1 || true
  else
    update-rc.d "$1" disable >/dev/null 2>&1 || true
    invoke-rc.d "$1" stop >/dev/null 2>&1 || true
  fi
}

# Dovecot with IMAP and LMTP, for the bouncer tests. A system-wide Dovecot that was already
# installed is left as it is; one this installs is stopped.
ensure_dovecot() {
  local libexec
  libexec=$(doveconf -d -h libexec_dir 2>/dev/null) || libexec=
  [[ -n $libexec && -x $libexec/imap && -x $libexec/lmtp ]] && return 0
  local fresh=
  have_daemon dovecot || fresh=1
  apt_install dovecot-imapd dovecot-lmtpd
  if [[ -n $fresh ]]; then
    stop_system_daemon dovecot
    doveadm stop >/dev/null 2>&1 || true  # in case it was started without an init system
  fi
  have_daemon dovecot || die "dovecot was installed but is not in /usr/sbin or on PATH"
}

# Postfix, for the bouncer tests. Installed with "No configuration" (no /etc/postfix/main.cf):
# no questions asked, and no system-wide Postfix to run. Another MTA (a /usr/sbin/sendmail
# without Postfix), which the package would remove, is replaced only in CI.
ensure_postfix() {
  have_daemon postfix && return 0
  [[ ! -e /usr/sbin/sendmail || ${CI:-} == true ]] \
    || die "another MTA owns /usr/sbin/sendmail; postfix would replace it (CI=true allows that)"
  if command -v debconf-set-selections >/dev/null 2>&1; then
    echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
  fi
  apt_install postfix
  stop_system_daemon postfix
  have_daemon postfix || die "postfix was installed but is not in /usr/sbin or on PATH"
}

# Prometheus (promtool), Alertmanager and the PostgreSQL exporter from Debian's packages, for the
# monitoring tests (tests/ops) and `make monitoring`, which run their own on their own ports and
# data directories: the system-wide daemons the packages start are stopped. Then RabbitMQ's
# built-in Prometheus endpoint (port 15692) on a local broker.
ensure_prometheus() {
  local missing=() package
  have_daemon promtool || missing+=(prometheus)
  have_daemon prometheus-alertmanager || missing+=(prometheus-alertmanager)
  have_daemon prometheus-postgres-exporter || missing+=(prometheus-postgres-exporter)
  if ((${#missing[@]})); then
    apt_install "${missing[@]}"
    for package in "${missing[@]}"; do stop_system_daemon "$package"; done
  fi
  ensure_rabbitmq_prometheus
}

# Enables the rabbitmq_prometheus plugin (shipped with the broker) when the broker is local and
# running and its endpoint does not answer yet.
ensure_rabbitmq_prometheus() {
  local host port
  host=$(url_host "$MAILFLEET_RABBIT__URL"); port=$(url_port "$MAILFLEET_RABBIT__URL" 5672)
  if ! is_local "$host" || ! port_open "$host" "$port"; then return 0; fi
  port_open 127.0.0.1 15692 && return 0
  PATH="$PATH:/usr/sbin:/sbin" command -v rabbitmq-plugins >/dev/null 2>&1 || return 0
  say "enabling RabbitMQ's Prometheus endpoint (rabbitmq_prometheus, port 15692)"
  PATH="$PATH:/usr/sbin:/sbin" rabbitmq-plugins enable rabbitmq_prometheus >/dev/null
  wait_port 127.0.0.1 15692 30 "RabbitMQ's Prometheus endpoint"
}
