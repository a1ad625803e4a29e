#!/bin/sh
# Container entrypoint: install a provisioned node key, then exec shoal.
#
# Keys come from a Secret or a bind mount, whose file modes (0644, root-owned) the
# node rightly refuses; a private copy with mode 0600 goes into the data dir once.
# `node start` gets --data-dir from SHOAL_DATA_DIR unless the arguments give one.
set -eu
data_dir="${SHOAL_DATA_DIR:-/var/lib/shoal}"
key="${SHOAL_KEY_FILE:-}"
if [ -n "$key" ] && [ -f "$key" ] && [ ! -e "$data_dir/node.key" ]; then
    mkdir -p "$data_dir"
    (umask 077 && cp "$key" "$data_dir/node.key")
fi
if [ "${1:-}" = node ] && [ "${2:-}" = start ]; then
    case " $* " in
        *" --data-dir "*) ;;
        *) shift 2; set -- node start --data-dir "$data_dir" "$@" ;;
    esac
fi
exec shoal "$@"
