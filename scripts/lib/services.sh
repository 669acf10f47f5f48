# shellcheck shell=bash
# The services of the local stack: PostgreSQL, MariaDB and Redis (the system's, started if
# stopped), NATS with JetStream and SeaweedFS as the S3 (ours, from LETHE_HOME). Every ensure_* function
# reuses what already runs and starts what does not; a system service that scripts/stack had to
# start is recorded in $LETHE_RUN/started-<service> so that `scripts/stack down` stops it, and
# only it.

EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

mark_started() { printf '%s\n' "$2" >"$LETHE_RUN/started-$1"; }

# A sample store was (re)created empty: the sample data must be seeded again.
forget_seeding() { rm -f "$LETHE_RUN"/seeded-*; }

# pid_listening PORT: pid of the process listening on a local TCP port, if visible.
pid_listening() {
  command -v ss >/dev/null 2>&1 || return 0
  ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2
}

# adopt NAME PORT EXE: when the process serving PORT runs our EXE but has no pid file (started
# by hand, or the pid file was lost), record it so that `scripts/stack down` stops it.
adopt() {
  local name=$1 port=$2 exe=$3 pidfile=$LETHE_RUN/$1.pid pid
  pid=$(read_pid "$pidfile")
  [[ -n $pid ]] && pid_runs "$pid" "${exe##*/}" && return 0
  pid=$(pid_listening "$port")
  if [[ -n $pid && "$(pid_exe "$pid")" == "$(readlink -f "$exe")" ]]; then
    printf '%s\n' "$pid" >"$pidfile"
  else
    rm -f "$pidfile"
  fi
}

# --- PostgreSQL -------------------------------------------------------------------------------

pg_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2 >/dev/null 2>&1; }
psql_admin() { psql -w -X -q -v ON_ERROR_STOP=1 "$PG_ADMIN_URL" "$@"; }
pg_login_ok() { psql_admin -Atc 'select 1' >/dev/null 2>&1; }

start_postgres() {
  local clusters line version name status log
  if has_systemd; then
    as_root systemctl start postgresql || die "systemctl start postgresql failed (journalctl -u postgresql)"
    mark_started postgresql systemd
  else
    command -v pg_lsclusters >/dev/null 2>&1 ||
      die "PostgreSQL is not running on $PG_HOST:$PG_PORT and pg_lsclusters is missing: start it yourself"
    clusters=$(pg_lsclusters -h 2>/dev/null || true)
    if [[ -z $clusters ]]; then
      version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
      info "PostgreSQL: creating cluster $version/main on port $PG_PORT"
      as_root pg_createcluster "$version" main --port "$PG_PORT" >>"$LETHE_LOGS/postgresql-setup.log" 2>&1 ||
        die "pg_createcluster failed; see $LETHE_LOGS/postgresql-setup.log"
      clusters=$(pg_lsclusters -h)
    fi
    line=$(awk -v port="$PG_PORT" '$3 == port' <<<"$clusters" | head -n 1)
    [[ -n $line ]] || die "no PostgreSQL cluster is configured on port $PG_PORT (see pg_lsclusters)"
    read -r version name _ status _ _ log <<<"$line"
    [[ $status == down ]] ||
      die "PostgreSQL cluster $version/$name is $status but does not answer on $PG_HOST:$PG_PORT; see $log"
    info "PostgreSQL: starting cluster $version/$name"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start ||
      die "could not start PostgreSQL $version/$name; see $log"
    mark_started postgresql "pg_ctlcluster $version $name"
  fi
  wait_until 60 pg_ready || die "PostgreSQL did not become ready on $PG_HOST:$PG_PORT (logs: /var/log/postgresql/)"
}

# The local stack logs in as role postgres over TCP without a password (as the tests and
# config/lethe.toml do). A fresh installation asks for one: allow the loopback addresses.
ensure_pg_login() {
  local hba
  pg_login_ok && return 0
  hba=$(as_user postgres psql -X -Atc 'show hba_file' 2>/dev/null) ||
    die "cannot log in to PostgreSQL as postgres, neither over TCP nor through the local socket"
  info "PostgreSQL: allowing passwordless login of role postgres from 127.0.0.1 and ::1 ($hba)"
  # shellcheck disable=SC2016 # expanded by the inner shell
  as_root sh -c 'tmp=$(mktemp) &&
    { printf "%s\n" "$2" "$3" "$4"; cat "$1"; } >"$tmp" && cat "$tmp" >"$1" && rm -f "$tmp"' _ "$hba" \
    "# Local development stack of Lethe (scripts/stack): role postgres, loopback only." \
    "host all postgres 127.0.0.1/32 trust" \
    "host all postgres ::1/128 trust" ||
    die "could not update $hba"
  as_user postgres psql -X -q -Atc 'select pg_reload_conf()' >/dev/null ||
    die "could not reload the PostgreSQL configuration"
  wait_until 10 pg_login_ok || die "still cannot log in as postgres to $PG_HOST:$PG_PORT; check $hba"
}

ensure_postgres() {
  local db
  if pg_ready; then
    info "PostgreSQL: running on $PG_HOST:$PG_PORT"
  else
    start_postgres
    info "PostgreSQL: started on $PG_HOST:$PG_PORT"
  fi
  ensure_pg_login
  for db in lethe lethe_accounts; do
    if [[ "$(psql_admin -Atc "select 1 from pg_database where datname = '$db'")" != 1 ]]; then
      psql_admin -c "create database \"$db\"" || die "could not create PostgreSQL database $db"
      info "PostgreSQL: created database $db"
      if [[ $db == lethe_accounts ]]; then forget_seeding; fi
    fi
  done
}

stop_postgresql() {
  local method
  read -r method <"$LETHE_RUN/started-postgresql" || true
  info "PostgreSQL: stopping (started by scripts/stack: $method)"
  case $method in
    systemd) as_root systemctl stop postgresql || warn "systemctl stop postgresql failed" ;;
    pg_ctlcluster\ *)
      # shellcheck disable=SC2086 # "pg_ctlcluster <version> <name>"
      set -- $method
      as_root pg_ctlcluster --skip-systemctl-redirect "$2" "$3" stop ||
        warn "pg_ctlcluster $2 $3 stop failed (already stopped?)"
      ;;
    *) warn "unknown start method '$method' recorded for PostgreSQL; leaving it running" ;;
  esac
}

# --- MariaDB ----------------------------------------------------------------------------------

mysql_client() {
  if command -v mariadb >/dev/null 2>&1; then mariadb "$@"; else mysql "$@"; fi
}
mysql_tcp() {
  mysql_client --protocol=TCP -h "$MYSQL_HOST" -P "$MYSQL_PORT" -uroot --connect-timeout=3 "$@"
}
# Answers even when the login is refused: the server is up.
mysql_alive() {
  local admin=mariadb-admin
  command -v "$admin" >/dev/null 2>&1 || admin=mysqladmin
  "$admin" --protocol=TCP -h "$MYSQL_HOST" -P "$MYSQL_PORT" -uroot --connect-timeout=2 ping \
    >/dev/null 2>&1
}
mysql_login_ok() { mysql_tcp -e 'select 1' >/dev/null 2>&1; }
mariadb_exe() {
  if [[ -x /usr/sbin/mariadbd ]]; then echo /usr/sbin/mariadbd; else echo /usr/sbin/mysqld; fi
}

start_mariadb() {
  local exe log=$LETHE_LOGS/mariadb.log
  if has_systemd; then
    as_root systemctl start mariadb || die "systemctl start mariadb failed (journalctl -u mariadb)"
    mark_started mariadb systemd
  else
    exe=$(mariadb_exe)
    info "MariaDB: starting $exe (output: $log)"
    { : >>"$log"; } 2>/dev/null || true
    as_root install -d -m 0755 -o mysql -g mysql /run/mysqld
    if ! as_root test -d /var/lib/mysql/mysql; then
      as_root mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$log" 2>&1 ||
        die "could not initialise /var/lib/mysql; see $log"
    fi
    as_root start-stop-daemon --start --oknodo --background --chuid mysql \
      --pidfile /run/mysqld/mysqld.pid --output "$log" --exec "$exe" ||
      die "could not start MariaDB; see $log"
    mark_started mariadb "start-stop-daemon $exe"
  fi
  wait_until 60 mysql_alive || {
    show_log_tail "$log"
    die "MariaDB did not come up on $MYSQL_HOST:$MYSQL_PORT; see $log and /var/log/mysql/"
  }
}

# The local stack logs in as root over TCP without a password. A fresh Debian installation lets
# root in only through the unix socket (as the system's root): allow the empty password too.
ensure_mysql_login() {
  mysql_login_ok && return 0
  info "MariaDB: allowing passwordless login of root from 127.0.0.1"
  as_root "$(command -v mariadb || command -v mysql)" --protocol=SOCKET -uroot <<'SQL' || die "could not change root's authentication through the MariaDB socket"
ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('');
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
  wait_until 10 mysql_login_ok || die "still cannot log in as root to MariaDB on $MYSQL_HOST:$MYSQL_PORT"
}

ensure_mariadb() {
  if mysql_alive; then
    info "MariaDB: running on $MYSQL_HOST:$MYSQL_PORT"
  else
    start_mariadb
    info "MariaDB: started on $MYSQL_HOST:$MYSQL_PORT"
  fi
  ensure_mysql_login
  if [[ -z "$(mysql_tcp -N -e "show databases like 'lethe_chat'")" ]]; then
    mysql_tcp -e 'create database if not exists lethe_chat' || die "could not create MariaDB database lethe_chat"
    info "MariaDB: created database lethe_chat"
    forget_seeding
  fi
}

stop_mariadb() {
  local method
  read -r method <"$LETHE_RUN/started-mariadb" || true
  info "MariaDB: stopping (started by scripts/stack: $method)"
  case $method in
    systemd) as_root systemctl stop mariadb || warn "systemctl stop mariadb failed" ;;
    start-stop-daemon\ *)
      as_root start-stop-daemon --stop --oknodo --retry TERM/60/KILL/5 \
        --pidfile /run/mysqld/mysqld.pid --exec "${method#start-stop-daemon }" >/dev/null ||
        warn "could not stop MariaDB"
      ;;
    *) warn "unknown start method '$method' recorded for MariaDB; leaving it running" ;;
  esac
}

# --- Redis ------------------------------------------------------------------------------------

redis_ready() { [[ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; }

start_redis() {
  local exe
  if has_systemd; then
    as_root systemctl start redis-server || die "systemctl start redis-server failed (journalctl -u redis-server)"
    mark_started redis systemd
  elif as_root test -e /etc/redis/redis.conf && id redis >/dev/null 2>&1; then
    exe=$(command -v redis-server)
    info "Redis: starting $exe with /etc/redis/redis.conf"
    as_root install -d -m 0755 -o redis -g redis /run/redis
    as_root start-stop-daemon --start --oknodo --chuid redis:redis \
      --pidfile /run/redis/redis-server.pid --exec "$exe" -- \
      /etc/redis/redis.conf --daemonize yes --pidfile /run/redis/redis-server.pid ||
      die "could not start Redis (log: see logfile in /etc/redis/redis.conf)"
    mark_started redis system
  else
    info "Redis: starting a private instance (data: $LETHE_RUN/redis, log: $LETHE_LOGS/redis.log)"
    mkdir -p "$LETHE_RUN/redis"
    redis-server --bind "$REDIS_HOST" --port "$REDIS_PORT" --daemonize yes \
      --dir "$LETHE_RUN/redis" --pidfile "$LETHE_RUN/redis.pid" --logfile "$LETHE_LOGS/redis.log" ||
      die "could not start Redis; see $LETHE_LOGS/redis.log"
    mark_started redis private
  fi
  wait_until 30 redis_ready || die "Redis did not answer on $REDIS_HOST:$REDIS_PORT"
}

ensure_redis() {
  if redis_ready; then
    info "Redis: running on $REDIS_HOST:$REDIS_PORT"
  else
    port_open "$REDIS_HOST" "$REDIS_PORT" &&
      die "port $REDIS_PORT is in use but does not answer Redis PING (password set?)"
    start_redis
    info "Redis: started on $REDIS_HOST:$REDIS_PORT"
  fi
}

stop_redis() {
  local method
  read -r method <"$LETHE_RUN/started-redis" || true
  info "Redis: stopping (started by scripts/stack: $method)"
  case $method in
    systemd) as_root systemctl stop redis-server || warn "systemctl stop redis-server failed" ;;
    system | private) redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" shutdown >/dev/null 2>&1 || true ;;
    *) warn "unknown start method '$method' recorded for Redis; leaving it running" ;;
  esac
}

# --- NATS -------------------------------------------------------------------------------------

nats_monitor() { curl -fsS -m 3 "http://$NATS_HOST:$NATS_MONITOR_PORT/$1" 2>/dev/null; }
nats_js_ok() { nats_monitor 'healthz?js-enabled-only=true' >/dev/null; }

ensure_nats() {
  local varz version port pid log=$LETHE_LOGS/nats.log pidfile=$LETHE_RUN/nats.pid
  if port_open "$NATS_HOST" "$NATS_PORT"; then
    varz=$(nats_monitor varz) ||
      die "port $NATS_PORT is in use, but no NATS monitoring answers on port $NATS_MONITOR_PORT; free port $NATS_PORT"
    version=$(jq -r '.version // empty' <<<"$varz")
    port=$(jq -r '.port // empty' <<<"$varz")
    [[ $port == "$NATS_PORT" ]] ||
      die "the NATS monitoring port $NATS_MONITOR_PORT belongs to a server on port $port, not $NATS_PORT"
    version_ge "$version" "$NATS_MIN_VERSION" ||
      die "the NATS server on port $NATS_PORT is v$version; Lethe needs >= $NATS_MIN_VERSION"
    nats_js_ok || die "the NATS server on port $NATS_PORT runs without JetStream"
    adopt nats "$NATS_PORT" "$NATS_BIN"
    info "NATS: running on nats://$NATS_HOST:$NATS_PORT (v$version, JetStream on)"
    return 0
  fi
  mkdir -p "$LETHE_RUN/nats"
  spawn "$pidfile" "$log" "$NATS_BIN" --addr "$NATS_HOST" --port "$NATS_PORT" \
    --http_port "$NATS_MONITOR_PORT" --name lethe-local --jetstream --store_dir "$LETHE_RUN/nats"
  pid=$(read_pid "$pidfile")
  if ! wait_until 30 nats_js_ok; then
    show_log_tail "$log"
    die "NATS did not start on port $NATS_PORT; see $log"
  fi
  info "NATS: started on nats://$NATS_HOST:$NATS_PORT (pid $pid, JetStream in $LETHE_RUN/nats, log: $log)"
}

# --- S3 (SeaweedFS) ---------------------------------------------------------------------------

# s3_call METHOD PATH [CURL ARGS...]: a SigV4-signed request with an empty body; prints the status.
s3_call() {
  local method=$1 path=$2
  shift 2
  curl -sS -o /dev/null -m 10 -w '%{http_code}' -X "$method" "$@" \
    --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
    -H "x-amz-content-sha256: $EMPTY_SHA256" "$S3_ENDPOINT/$path" 2>/dev/null || true
}

# s3_up: the S3 endpoint answers a signed ListBuckets with the local credentials. An open port is
# not enough: weed's S3 gateway listens before its filer answers, and a server that ignores or
# refuses the credentials is of no use to the stack.
s3_up() { [[ "$(s3_call GET "")" == 200 ]]; }

# s3_server: the Server header of the S3 endpoint ("SeaweedFS 8000GB 4.48", ...), if any.
s3_server() {
  curl -sS -o /dev/null -m 5 -D - "$S3_ENDPOINT/" 2>/dev/null |
    sed -n 's/^[Ss]erver: *\(.*[^[:space:]]\)[[:space:]]*$/\1/p' | head -n 1
}

# The ports `weed mini` opens: each component's HTTP port and its gRPC port (HTTP + offset).
seaweedfs_ports() {
  local port
  for port in "$S3_PORT" "$SEAWEEDFS_MASTER_PORT" "$SEAWEEDFS_VOLUME_PORT" "$SEAWEEDFS_FILER_PORT" \
    "$SEAWEEDFS_ADMIN_PORT"; do
    printf '%s\n%s\n' "$port" "$((port + SEAWEEDFS_GRPC_OFFSET))"
  done
}

# write_s3_identities FILE: the identities of weed's S3 gateway. Without one it lets anyone in
# anonymously; with it, only the stack's key, with every right on every bucket.
write_s3_identities() {
  local file=$1
  (
    umask 077
    jq -n --arg key "$S3_ACCESS_KEY" --arg secret "$S3_SECRET_KEY" '{identities: [{
      name: "lethe",
      credentials: [{accessKey: $key, secretKey: $secret}],
      actions: ["Admin", "Read", "List", "Tagging", "Write"]
    }]}' >"$file"
  ) || die "could not write $file"
}

start_seaweedfs() {
  local port pid log=$LETHE_LOGS/seaweedfs.log pidfile=$LETHE_RUN/seaweedfs.pid
  local dir=$LETHE_RUN/seaweedfs identities=$LETHE_RUN/seaweedfs-s3.json
  # weed mini silently moves a component whose port is taken to another one: refuse instead, so
  # that the addresses stay the documented ones.
  while read -r port; do
    port_open "$S3_HOST" "$port" &&
      die "port $port, which SeaweedFS needs, is in use (see $LETHE_REPO/scripts/lib/common.sh); free it"
  done < <(seaweedfs_ports)
  mkdir -p "$dir"
  write_s3_identities "$identities"
  # -master.volumeSizeLimitMB: each bucket is a collection with volumes of its own, and weed
  # sizes the volume count from free disk / volume size; 256 MiB volumes leave room for the many
  # short-lived buckets of the tests. Iceberg, Lance and WebDAV are not needed, and weed's admin
  # server (which mini always runs, for its maintenance worker) has its UI off.
  # -s3.autoCreateBucket=false: writing to a missing bucket fails, as on AWS.
  spawn "$pidfile" "$log" "$WEED_BIN" mini -dir="$dir" \
    -ip="$S3_HOST" -ip.bind="$S3_HOST" -master.telemetry=false \
    -s3.port="$S3_PORT" -s3.port.grpc="$((S3_PORT + SEAWEEDFS_GRPC_OFFSET))" \
    -s3.config="$identities" -s3.autoCreateBucket=false -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.port="$SEAWEEDFS_MASTER_PORT" \
    -master.port.grpc="$((SEAWEEDFS_MASTER_PORT + SEAWEEDFS_GRPC_OFFSET))" \
    -master.volumeSizeLimitMB=256 \
    -volume.port="$SEAWEEDFS_VOLUME_PORT" \
    -volume.port.grpc="$((SEAWEEDFS_VOLUME_PORT + SEAWEEDFS_GRPC_OFFSET))" \
    -filer.port="$SEAWEEDFS_FILER_PORT" \
    -filer.port.grpc="$((SEAWEEDFS_FILER_PORT + SEAWEEDFS_GRPC_OFFSET))" \
    -admin.ui=false -admin.port="$SEAWEEDFS_ADMIN_PORT" \
    -admin.port.grpc="$((SEAWEEDFS_ADMIN_PORT + SEAWEEDFS_GRPC_OFFSET))" \
    -webdav=false
  pid=$(read_pid "$pidfile")
  if ! wait_until 60 s3_up; then
    show_log_tail "$log"
    pid_runs "$pid" weed && stop_pid "$pid" SeaweedFS
    rm -f "$pidfile"
    die "SeaweedFS did not answer a signed ListBuckets on $S3_ENDPOINT; see $log"
  fi
  info "S3: started SeaweedFS on $S3_ENDPOINT (pid $pid, data in $dir, log: $log)"
}

ensure_bucket() {
  local bucket=$1 code
  code=$(s3_call HEAD "$bucket" --head)
  case $code in
    200) return 0 ;;
    404)
      code=$(s3_call PUT "$bucket" -H 'Content-Length: 0')
      [[ $code == 200 ]] || die "could not create S3 bucket $bucket (HTTP $code from $S3_ENDPOINT)"
      info "S3: created bucket $bucket"
      if [[ $bucket == lethe-files ]]; then forget_seeding; fi
      ;;
    *) die "S3 bucket $bucket: unexpected HTTP $code from $S3_ENDPOINT" ;;
  esac
}

ensure_s3() {
  local pid pidfile=$LETHE_RUN/seaweedfs.pid
  pid=$(read_pid "$pidfile")
  # Ours, still starting (another scripts/stack run started it a moment ago): give it time.
  if ! s3_up && [[ -n $pid ]] && pid_runs "$pid" weed; then
    wait_until 60 s3_up || true
  fi
  if s3_up; then
    adopt seaweedfs "$S3_PORT" "$WEED_BIN"
    info "S3: running on $S3_ENDPOINT ($(s3_server))"
  elif port_open "$S3_HOST" "$S3_PORT"; then
    die "port $S3_PORT is in use but does not answer a signed ListBuckets with the local credentials ($S3_ACCESS_KEY; HTTP $(s3_call GET "")); free it"
  else
    start_seaweedfs
  fi
  ensure_bucket lethe
  ensure_bucket lethe-files
}

# --- all --------------------------------------------------------------------------------------

# stop_own NAME WHAT EXE: stop a process of ours recorded in $LETHE_RUN/NAME.pid, if it still
# runs an executable named EXE.
stop_own() {
  local name=$1 what=$2 exe=$3 pidfile=$LETHE_RUN/$1.pid pid
  pid=$(read_pid "$pidfile")
  if [[ -n $pid ]] && pid_runs "$pid" "$exe"; then
    info "$what: stopping (pid $pid)"
    stop_pid "$pid" "$what"
  fi
  rm -f "$pidfile"
}

# --- mail catcher (maildev) -------------------------------------------------------------------

mail_up() { curl -fsS -m 3 "http://$MAIL_HOST:$MAIL_HTTP_PORT/email" >/dev/null 2>&1; }

ensure_mail() {
  local pid log=$LETHE_LOGS/maildev.log pidfile=$LETHE_RUN/maildev.pid
  if mail_up; then
    info "mail catcher: running (SMTP $MAIL_HOST:$MAIL_SMTP_PORT, HTTP http://$MAIL_HOST:$MAIL_HTTP_PORT)"
    return 0
  fi
  port_open "$MAIL_HOST" "$MAIL_SMTP_PORT" && die "port $MAIL_SMTP_PORT is in use but no mail catcher answers on $MAIL_HTTP_PORT; free it"
  spawn "$pidfile" "$log" node "$MAILDEV_BIN" --ip "$MAIL_HOST" --smtp "$MAIL_SMTP_PORT" \
    --web "$MAIL_HTTP_PORT" --mail-directory "$LETHE_RUN/mail"
  pid=$(read_pid "$pidfile")
  if ! wait_until 30 mail_up; then
    show_log_tail "$log"
    die "the mail catcher did not start; see $log"
  fi
  info "mail catcher: started (pid $pid, SMTP $MAIL_HOST:$MAIL_SMTP_PORT, web and API http://$MAIL_HOST:$MAIL_HTTP_PORT, log: $log)"
}

stack_services() {
  stack_lock
  ensure_tools
  ensure_postgres
  ensure_mariadb
  ensure_redis
  ensure_nats
  ensure_s3
  ensure_mail
  stack_unlock
}

stop_services() {
  stop_own maildev "mail catcher" node
  stop_own seaweedfs S3 weed
  stop_own nats NATS nats-server
  local svc
  for svc in redis mariadb postgresql; do
    if [[ -e $LETHE_RUN/started-$svc ]]; then
      "stop_$svc"
      rm -f "$LETHE_RUN/started-$svc"
    fi
  done
}
