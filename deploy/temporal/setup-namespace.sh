#!/bin/sh
# The namespace and the rollback workflows' Keyword search attributes (run by the compose service
# temporal-setup, image temporalio/admin-tools; tests/test_compose.py runs it against a real server).
# Idempotent: only what is missing is created; then everything is checked. Any failure exits non-zero.
set -eu
: "${TEMPORAL_ADDRESS:?}" "${TEMPORAL_NAMESPACE:?}" "${SEARCH_ATTRIBUTES:?}"
ADDR="--address $TEMPORAL_ADDRESS"

retry() {  # up to 60 tries, 2 s apart: the server may still be starting
  n=0
  until "$@" >/dev/null 2>&1; do
    n=$((n + 1))
    [ "$n" -lt 60 ] || { echo "gave up waiting for: $*"; return 1; }
    sleep 2
  done
}

healthy() { temporal operator cluster health $ADDR | grep -q SERVING; }
listed() { temporal operator search-attribute list --namespace "$TEMPORAL_NAMESPACE" $ADDR; }
retry healthy
echo "temporal at $TEMPORAL_ADDRESS is serving"

if temporal operator namespace describe --namespace "$TEMPORAL_NAMESPACE" $ADDR >/dev/null 2>&1; then
  echo "namespace $TEMPORAL_NAMESPACE exists"
else
  temporal operator namespace create --namespace "$TEMPORAL_NAMESPACE" --retention "${TEMPORAL_RETENTION:-720h}" $ADDR
  retry temporal operator namespace describe --namespace "$TEMPORAL_NAMESPACE" $ADDR
fi

retry listed  # a new namespace takes a few seconds to reach every service
existing="$(listed)"
args=""
for name in $SEARCH_ATTRIBUTES; do
  if echo "$existing" | grep -qw "$name"; then
    echo "search attribute $name already registered"
  else
    args="$args --name $name --type Keyword"
  fi
done
if [ -n "$args" ]; then
  # One call for all of them (back-to-back single creates can race on the server).
  temporal operator search-attribute create --namespace "$TEMPORAL_NAMESPACE" $ADDR $args
fi
existing="$(listed)"
for name in $SEARCH_ATTRIBUTES; do
  echo "$existing" | grep -qw "$name" || { echo "search attribute $name missing"; exit 1; }
done
echo "namespace $TEMPORAL_NAMESPACE ready, search attributes: $SEARCH_ATTRIBUTES"
