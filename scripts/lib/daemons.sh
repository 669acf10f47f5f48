# shellcheck shell=bash
# The Lethe side of the local stack: build the binaries, seed the sample stores, the sample
# payment processor, the demo API key, and the five daemons (start, health, stop).

LETHE_DAEMONS=(api eraser exporter backup retention)
LETHE_PROFILE=${LETHE_PROFILE:-release}

# daemon_listen NAME: the daemon's listen address (config/lethe.toml, or its LETHE__ override).
daemon_listen() {
  case $1 in
    api) printf '%s\n' "${LETHE__API__LISTEN:-127.0.0.1:8080}" ;;
    eraser) printf '%s\n' "${LETHE__ERASER__LISTEN:-127.0.0.1:9181}" ;;
    exporter) printf '%s\n' "${LETHE__EXPORTER__LISTEN:-127.0.0.1:9182}" ;;
    backup) printf '%s\n' "${LETHE__BACKUP__LISTEN:-127.0.0.1:9183}" ;;
    retention) printf '%s\n' "${LETHE__RETENTION__LISTEN:-127.0.0.1:9184}" ;;
    *) die "unknown daemon $1" ;;
  esac
}

# daemon_url NAME: base URL of the daemon, as reached from this machine.
daemon_url() {
  local listen host
  listen=$(daemon_listen "$1")
  host=${listen%:*}
  case $host in
    0.0.0.0 | '') host=127.0.0.1 ;;
    '[::]') host='[::1]' ;;
  esac
  printf 'http://%s:%s\n' "$host" "${listen##*:}"
}

daemon_healthy() { http_ok "$(daemon_url "$1")/healthz"; }

# bin_dir: where cargo puts the binaries of LETHE_PROFILE (honours CARGO_TARGET_DIR and cargo's
# own configuration).
bin_dir() {
  local target=
  case $LETHE_PROFILE in
    release | debug) ;;
    *) die "LETHE_PROFILE must be release or debug, not '$LETHE_PROFILE'" ;;
  esac
  if command -v cargo >/dev/null 2>&1; then
    target=$(cd "$LETHE_REPO" && cargo metadata --no-deps --format-version 1 2>/dev/null |
      jq -r '.target_directory // empty' 2>/dev/null) || target=
  fi
  if [[ -z $target ]]; then
    target=${CARGO_TARGET_DIR:-target}
    [[ $target == /* ]] || target=$LETHE_REPO/$target
  fi
  printf '%s/%s\n' "$target" "$LETHE_PROFILE"
}

build_binaries() {
  local log=$LETHE_LOGS/build.log
  local -a args=(build --bins)
  [[ $LETHE_PROFILE == release ]] && args+=(--release)
  if [[ ${LETHE_SKIP_BUILD:-0} == 1 ]]; then
    info "build: skipped (LETHE_SKIP_BUILD=1); using $BIN_DIR"
    return 0
  fi
  command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install Rust with rustup (https://rustup.rs), then re-run"
  info "build: cargo ${args[*]} (the first build takes several minutes; log: $log)"
  if ! (cd "$LETHE_REPO" && cargo "${args[@]}") >"$log" 2>&1; then
    show_log_tail "$log" 40
    die "build failed (cargo ${args[*]}); see $log"
  fi
}

# require_bin NAME: path of a built binary, or a clear error.
require_bin() {
  [[ -x $BIN_DIR/$1 ]] || die "$BIN_DIR/$1 not found: the build did not produce $1"
  printf '%s\n' "$BIN_DIR/$1"
}

seed_subjects() { printf '%s\n' "${LETHE_SUBJECTS:-1000}"; }
seed_value() { printf '%s\n' "${LETHE_SEED:-42}"; }

# seed_sample_data: fill the sample stores once per (subjects, seed); a marker file records it.
seed_sample_data() {
  local n s marker log=$LETHE_LOGS/seed.log seeder counts total
  n=$(seed_subjects)
  s=$(seed_value)
  [[ $n =~ ^[0-9]+$ && $s =~ ^[0-9]+$ ]] || die "LETHE_SUBJECTS and LETHE_SEED must be whole numbers"
  marker=$LETHE_RUN/seeded-$n-$s
  if [[ -e $marker ]]; then
    info "sample data: already seeded ($n subjects, seed $s)"
    return 0
  fi
  seeder=$(require_bin lethe-seed)
  # No marker for this (subjects, seed): whatever sample data the stores hold is another run's.
  local -a reset=()
  if [[ "$("$seeder" --help 2>/dev/null || true)" == *--reset* ]]; then reset=(--reset); fi
  info "sample data: seeding $n subjects with seed $s (log: $log)"
  if ! counts=$("$seeder" --config "$LETHE_CONFIG" --subjects "$n" --seed "$s" "${reset[@]}" 2>>"$log"); then
    show_log_tail "$log"
    die "seeding the sample stores failed; see $log"
  fi
  printf '%s\n' "$counts" >>"$log"
  rm -f "$LETHE_RUN"/seeded-*
  # The processor seeds its own store when it finds none: drop the other run's.
  stop_processor
  rm -f "$PROCESSOR_DATA"
  : >"$marker"
  total=$(awk '$1 == "total" { print $NF }' <<<"$counts")
  info "sample data: seeded${total:+ $total records}; counts per store in $log"
}

# --- the sample payment processor (the data map's `payments` store, kind "http") -------------

PROCESSOR_DATA=$LETHE_RUN/processor.json

# processor_url: where it listens, from PAYMENTS_API_URL (config/local.env).
processor_url() { printf '%s\n' "${PAYMENTS_API_URL:-http://127.0.0.1:8090}"; }

processor_up() { http_ok "$(processor_url)/healthz"; }

# start_processor: lethe-sample-processor on PAYMENTS_API_URL's port with its own store (a JSON
# file in $LETHE_RUN), seeded with the sample subjects the first time; PAYMENTS_API_KEY is the
# secret key it asks callers for.
start_processor() {
  local exe=lethe-sample-processor bin pidfile=$LETHE_RUN/lethe-sample-processor.pid pid
  local log=$LETHE_LOGS/lethe-sample-processor.log url listen
  bin=$(require_bin "$exe")
  url=$(processor_url)
  listen=${url#*://}
  listen=${listen%%/*}
  pid=$(read_pid "$pidfile")
  if [[ -n $pid ]] && pid_runs "$pid" "$exe"; then
    if [[ $bin -nt $pidfile ]]; then
      info "$exe: rebuilt since it started; restarting (pid $pid)"
      stop_pid "$pid" "$exe"
    else
      info "$exe: running (pid $pid)"
      return 0
    fi
  elif processor_up; then
    info "$exe: $url already answers (not started by scripts/stack); leaving it"
    rm -f "$pidfile"
    return 0
  fi
  printf '=== %s: starting %s on %s\n' "$(date -u +%FT%TZ)" "$bin" "$listen" >>"$log"
  spawn "$pidfile" "$log" env LETHE_PROCESSOR_API_KEY="${PAYMENTS_API_KEY:-}" "$bin" \
    --listen "$listen" --data "$PROCESSOR_DATA" --subjects "$(seed_subjects)" --seed "$(seed_value)"
  if ! wait_until 30 processor_up; then
    show_log_tail "$log"
    die "$exe did not answer $url/healthz; see $log"
  fi
  info "$exe: started (pid $(read_pid "$pidfile"), $url, log: $log)"
}

stop_processor() { stop_own lethe-sample-processor lethe-sample-processor lethe-sample-processor; }

# subject_email INDEX: the e-mail address of a seeded subject (the seeder computes it, offline).
subject_email() {
  local json
  json=$("$BIN_DIR/lethe-seed" --config "$LETHE_CONFIG" subject --index "$1" --seed "$(seed_value)" \
    2>>"$LETHE_LOGS/seed.log") || return 1
  jq -er '.email' <<<"$json" 2>/dev/null
}

# ensure_operator_key: a local operator's OpenPGP key, made once with gpg, whose public
# certificate the backup daemon encrypts to (it refuses to run without a recipient). The secret
# key stays beside it for `lethe-backup restore --secret-key`. A real deployment configures its
# operators' certificates in [backups] recipients instead.
ensure_operator_key() {
  local op=$LETHE_RUN/operator
  if [[ ! -s $op/ops.asc ]]; then
    install -d -m 700 "$op" "$op/gnupg"
    GNUPGHOME="$op/gnupg" gpg --batch --quiet --passphrase '' \
      --quick-gen-key 'Lethe local operator <ops@lethe.invalid>' default default 0 2>>"$LETHE_LOGS/gpg.log"
    GNUPGHOME="$op/gnupg" gpg --batch --armor --export ops@lethe.invalid >"$op/ops.asc"
    GNUPGHOME="$op/gnupg" gpg --batch --armor --pinentry-mode loopback --passphrase '' \
      --export-secret-keys ops@lethe.invalid >"$op/ops.key"
    chmod 600 "$op/ops.key"
    info "operator key: made $op/ops.asc (public) and $op/ops.key (secret, for restores)"
  fi
  export LETHE__BACKUPS__RECIPIENTS="[\"$op/ops.asc\"]"
}

start_daemon() {
  local name=$1 exe=lethe-$1 bin pidfile log pid
  pidfile=$LETHE_RUN/$exe.pid
  log=$LETHE_LOGS/$exe.log
  bin=$(require_bin "$exe")
  pid=$(read_pid "$pidfile")
  if [[ -n $pid ]] && pid_runs "$pid" "$exe"; then
    if [[ $bin -nt $pidfile ]]; then
      info "$exe: rebuilt since it started; restarting (pid $pid)"
      stop_pid "$pid" "$exe"
    else
      info "$exe: running (pid $pid)"
      return 0
    fi
  elif daemon_healthy "$name"; then
    info "$exe: $(daemon_url "$name") already answers (not started by scripts/stack); leaving it"
    rm -f "$pidfile"
    return 0
  fi
  printf '=== %s: starting %s --config %s\n' "$(date -u +%FT%TZ)" "$bin" "$LETHE_CONFIG" >>"$log"
  # Logs go to a file: no terminal colours in it.
  spawn "$pidfile" "$log" env NO_COLOR=1 "$bin" --config "$LETHE_CONFIG"
  info "$exe: started (pid $(read_pid "$pidfile"), log: $log)"
}

# wait_daemons: every daemon answers /healthz, or a clear error naming its log.
wait_daemons() {
  local timeout=${LETHE_WAIT_TIMEOUT:-90} deadline name pid log url
  deadline=$((SECONDS + timeout))
  for name in "${LETHE_DAEMONS[@]}"; do
    log=$LETHE_LOGS/lethe-$name.log
    url=$(daemon_url "$name")/healthz
    until daemon_healthy "$name"; do
      pid=$(read_pid "$LETHE_RUN/lethe-$name.pid")
      if [[ -n $pid ]] && pid_gone "$pid"; then
        show_log_tail "$log"
        die "lethe-$name exited during start-up; see $log"
      fi
      if ((SECONDS >= deadline)); then
        show_log_tail "$log"
        die "lethe-$name did not answer $url within ${timeout}s; see $log"
      fi
      sleep 0.5
    done
  done
  info "daemons: all five answer /healthz"
}

# ensure_demo_key: an API key of tenant "demo", created once and kept in $LETHE_RUN/demo-api-key.
ensure_demo_key() {
  local keyfile=$LETHE_RUN/demo-api-key key='' code log=$LETHE_LOGS/keys.log api
  api=$(daemon_url api)
  if [[ -s $keyfile ]]; then
    read -r key <"$keyfile" || true
    code=$(http_code "$api/v1/requests" -H "Authorization: Bearer $key")
    if [[ $code == 401 ]]; then
      warn "the stored demo API key is refused (ledger reset?); creating a new one"
      key=''
    fi
  fi
  if [[ -z $key ]]; then
    if ! key=$("$(require_bin lethe-api)" --config "$LETHE_CONFIG" keys create --tenant demo \
      --scopes requests:write,requests:read,admin 2>>"$log"); then
      show_log_tail "$log"
      die "creating the demo API key failed; see $log"
    fi
    [[ -n $key && $key != *[[:space:]]* ]] ||
      die "lethe-api keys create printed something else than one key on stdout; see $log"
    (umask 077 && printf '%s\n' "$key" >"$keyfile")
    info "demo tenant: created an API key (kept in $keyfile)"
  else
    info "demo tenant: reusing the API key kept in $keyfile"
  fi
  DEMO_API_KEY=$key
}

# ensure_company_tenants: one Lethe tenant per company of the sample's users (users.company, the
# data map's `tenant` column), each with a requests key, created once and kept in
# $LETHE_RUN/company-keys (company<TAB>key). The breach register's census then attributes the
# sample's subjects to these tenants, and a request can be filed as the company a subject
# belongs to.
ensure_company_tenants() {
  local keyfile=$LETHE_RUN/company-keys log=$LETHE_LOGS/keys.log companies company key
  if [[ -s $keyfile ]]; then
    info "company tenants: reusing the keys kept in $keyfile"
    return 0
  fi
  if ! companies=$(psql -w -X -At -c 'SELECT DISTINCT company FROM users WHERE company IS NOT NULL ORDER BY 1' \
    "$ACCOUNTS_DATABASE_URL" 2>>"$log"); then
    warn "could not list the sample's companies; no company tenants (see $log)"
    return 0
  fi
  local tmp=$keyfile.tmp
  (umask 077 && : >"$tmp")
  while IFS= read -r company; do
    [[ -n $company ]] || continue
    if ! key=$("$(require_bin lethe-api)" --config "$LETHE_CONFIG" keys create --tenant "$company" \
      --scopes requests:write,requests:read 2>>"$log"); then
      rm -f "$tmp"
      show_log_tail "$log"
      die "creating the API key of company tenant \"$company\" failed; see $log"
    fi
    printf '%s\t%s\n' "$company" "$key" >>"$tmp"
  done <<<"$companies"
  mv "$tmp" "$keyfile"
  info "company tenants: $(wc -l <"$keyfile") created, their keys kept in $keyfile"
}

print_summary() {
  local api email body
  api=$(daemon_url api)
  if ! email=$(subject_email 1); then
    warn "could not compute seeded subject 1's e-mail address (lethe-seed subject); see $LETHE_LOGS/seed.log"
    email='someone@example.org'
  fi
  body=$(jq -cn --arg email "$email" '{kind: "erasure", subject: {email: $email}}')
  cat <<EOF

Lethe is running.
  API:      $api  (/healthz, /readyz, /metrics, /openapi.json)
  Payments: $(processor_url)  (the sample processor, the data map's fifth store)
  API key:  $DEMO_API_KEY  (tenant "demo"; kept in $LETHE_RUN/demo-api-key)
  Logs:     $LETHE_LOGS/

File an erasure request for seeded subject 1:

  curl -sS -X POST $api/v1/requests \\
    -H 'Authorization: Bearer $DEMO_API_KEY' \\
    -H 'Content-Type: application/json' \\
    -d '$body'

Each company of the sample is a tenant too (users.company names it), with a key in
$LETHE_RUN/company-keys: the breach register counts affected subjects per company.

Follow it with GET $api/v1/requests/<id>. What runs: scripts/stack status. Stop: scripts/stack down.
EOF
}

stop_daemons() {
  local i name
  for ((i = ${#LETHE_DAEMONS[@]} - 1; i >= 0; i--)); do
    name=lethe-${LETHE_DAEMONS[i]}
    stop_own "$name" "$name" "$name"
  done
  stop_processor
}
