#!/usr/bin/env bash
# A throwaway Orthanc PACS (Debian's orthanc + orthanc-dicomweb) for tests and demos, on free loopback ports.
#
#   scripts/orthanc.sh start   start it (idempotent), wait until DICOMweb answers; prints the DICOMweb root URL
#   scripts/orthanc.sh url     print the DICOMweb URL of the running server (exit 1 when it is not running)
#   scripts/orthanc.sh stop    end the server and remove its folder (storage, index, log)
#
# Folder: ${UUSIC_ORTHANC_DIR:-/tmp/uusic-orthanc} (orthanc.json, storage/, orthanc.log, pid, url). No
# authentication, remote access refused (Orthanc answers 127.0.0.1 only), the DICOMweb plugin at /dicom-web/.
# Runs as the current user. Only the URL goes to stdout.
set -euo pipefail

OR_DIR="$(realpath -m "${UUSIC_ORTHANC_DIR:-/tmp/uusic-orthanc}")"
PID_FILE="$OR_DIR/pid"
URL_FILE="$OR_DIR/url"
PYTHON="${PYTHON:-python3}"
ORTHANC="${ORTHANC_BIN:-$(command -v Orthanc || echo /usr/sbin/Orthanc)}"

die() { echo "orthanc.sh: $*" >&2; exit 1; }

plugin_path() {  # the DICOMweb plugin orthanc-dicomweb installs
  local path
  for path in /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/lib/orthanc/libOrthancDicomWeb.so*; do
    [ -f "$path" ] && { echo "$path"; return; }
  done
  path="$(dpkg -L orthanc-dicomweb 2>/dev/null | grep -m1 'libOrthancDicomWeb\.so' || true)"
  [ -n "$path" ] || die "the DICOMweb plugin was not found: install the orthanc-dicomweb package"
  echo "$path"
}

is_running() { [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_config() {  # $1 HTTP port, $2 DICOM port
  cat >"$OR_DIR/orthanc.json" <<EOF
{
  "Name": "uusic-test",
  "StorageDirectory": "$OR_DIR/storage",
  "IndexDirectory": "$OR_DIR/storage",
  "HttpPort": $1,
  "DicomPort": $2,
  "DicomAet": "UUSICTEST",
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false,
  "HttpCompressionEnabled": false,
  "StorageCompression": false,
  "ConcurrentJobs": 1,
  "HttpThreadsCount": 8,
  "Plugins": ["$(plugin_path)"],
  "DicomWeb": {"Enable": true, "Root": "/dicom-web/", "EnableWado": false, "Host": "127.0.0.1:$1", "Ssl": false}
}
EOF
}

wait_ready() {  # $1 URL; the server answers QIDO-RS, or died
  local i
  for i in $(seq 1 300); do
    is_running || return 1
    if "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/studies", timeout=1)' \
         "$1" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  return 1
}

start_server() {
  local attempt http dicom url
  [ -x "$ORTHANC" ] || die "Orthanc not found: install the orthanc package"
  for attempt in 1 2 3; do  # another program may take a free port before the server binds it
    http="$(free_port)"; dicom="$(free_port)"
    write_config "$http" "$dicom"
    mkdir -p "$OR_DIR/storage"
    (cd "$OR_DIR" && exec "$ORTHANC" --logfile="$OR_DIR/orthanc.log" "$OR_DIR/orthanc.json" \
       </dev/null >/dev/null 2>&1) &
    echo $! >"$PID_FILE"
    url="http://127.0.0.1:$http/dicom-web"
    if wait_ready "$url"; then
      echo "$url" >"$URL_FILE"
      return
    fi
    cmd_stop_server
  done
  die "the server did not start, see $OR_DIR/orthanc.log"
}

cmd_stop_server() {
  local pid i
  is_running || { rm -f "$PID_FILE"; return 0; }
  pid="$(cat "$PID_FILE")"
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$PID_FILE"
}

cmd_start() {
  if ! is_running; then
    mkdir -p "$OR_DIR"
    chmod 700 "$OR_DIR"
    start_server
  fi
  cat "$URL_FILE"
}

cmd_url() {
  is_running && [ -f "$URL_FILE" ] || die "not running (scripts/orthanc.sh start)"
  cat "$URL_FILE"
}

cmd_stop() {
  cmd_stop_server
  case "$OR_DIR" in
    /|"") die "refusing to remove $OR_DIR" ;;
  esac
  rm -rf "$OR_DIR"
}

case "${1:-}" in
  start) cmd_start ;;
  url) cmd_url ;;
  stop) cmd_stop ;;
  *) die "usage: $0 start|stop|url" ;;
esac
