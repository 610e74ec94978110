#!/usr/bin/env bash
# Probes a Confluent-compatible schema registry API and prints, per request,
# METHOD PATH STATUS BODY: the table in docs/dev/apicurio.md came from this.
# Run it against a fresh, empty registry (it registers subjects):
#   tools/registry/probe.sh "$(scripts/registry.sh start)"
# The results depend on the global compatibility the registry starts with
# (scripts/registry.sh: REGISTRY_COMPATIBILITY, default BACKWARD).
set -uo pipefail
B="${1:?usage: tools/registry/probe.sh BASE_URL (e.g. http://127.0.0.1:PORT/apis/ccompat/v7)}"
B="${B%/}"
req() { # METHOD PATH [BODY [CONTENT_TYPE]]
  local m=$1 p=$2 body=${3-} ct=${4-application/vnd.schemaregistry.v1+json} out
  if [[ -n "$body" ]]; then
    out=$(curl -s -X "$m" -H "Content-Type: $ct" --data "$body" -w '\n%{http_code}' "$B$p")
  else
    out=$(curl -s -X "$m" -w '\n%{http_code}' "$B$p")
  fi
  printf '%-6s %-58s %s %s\n' "$m" "$p" "$(printf '%s' "$out" | tail -n1)" "$(printf '%s' "$out" | sed '$d' | tr -d '\n')"
  [[ -n "$body" ]] && printf '         body: %s\n' "$body"
  return 0
}
V1='{"schema":"{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"a\",\"type\":\"string\"}]}"}'
V2='{"schema":"{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"a\",\"type\":\"string\"},{\"name\":\"b\",\"type\":\"string\"}]}"}'
V2OK='{"schema":"{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"a\",\"type\":\"string\"},{\"name\":\"b\",\"type\":\"string\",\"default\":\"x\"}]}"}'
V1WS='{"schema":"{ \"type\": \"record\", \"name\": \"R\", \"fields\": [ { \"name\": \"a\", \"type\": \"string\" } ] }"}'
V1T='{"schemaType":"AVRO","schema":"{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"a\",\"type\":\"string\"}]}"}'
V1REORD='{"schema":"{\"name\":\"R\",\"type\":\"record\",\"fields\":[{\"type\":\"string\",\"name\":\"a\"}]}"}'
V1DOC='{"schema":"{\"type\":\"record\",\"name\":\"R\",\"doc\":\"hello\",\"fields\":[{\"name\":\"a\",\"type\":\"string\"}]}"}'
V1NS='{"schema":"{\"type\":\"record\",\"name\":\"R\",\"namespace\":\"com.example\",\"fields\":[{\"name\":\"a\",\"type\":\"string\"}]}"}'
BAD='{"schema":"{\"type\":\"nonsense\"}"}'

echo "## register, same schema again, variants, other subject"
req GET /subjects
req POST /subjects/s1-value/versions "$V1"
req POST /subjects/s1-value/versions "$V1"
req POST /subjects/s1-value/versions "$V1WS"
req POST /subjects/s1-value/versions "$V1T"
req POST /subjects/s1-value/versions "$V1REORD"
req POST /subjects/s1-value/versions "$V1DOC"
req POST /subjects/other-value/versions "$V1"
req GET /subjects
req GET /subjects/s1-value/versions
req GET /subjects/s1-value/versions/1
req GET /subjects/s1-value/versions/latest
req GET /subjects/s1-value/versions/-1
req GET /subjects/s1-value/versions/1/schema
req GET /schemas/ids/1
req GET /schemas/ids/1/versions
req GET /schemas/ids/1/subjects
req POST /subjects/s1-value "$V1"
req POST /subjects/s1-value "$V2"
req POST /subjects/ns-value/versions "$V1"
req POST /subjects/ns-value/versions "$V1NS"
req POST /subjects/p-key/versions '{"schema":"\"string\""}'
req GET /subjects/p-key/versions/1

echo "## missing subject / version / id, invalid versions"
req GET /subjects/nope/versions
req GET /subjects/nope/versions/1
req GET /subjects/nope/versions/latest
req GET /subjects/s1-value/versions/99
req GET /subjects/s1-value/versions/abc
req GET /subjects/s1-value/versions/0
req GET /subjects/s1-value/versions/-2
req GET /subjects/s1-value/versions/2147483648
req GET /schemas/ids/9999
req POST /subjects/nope "$V1"

echo "## config (global default as started)"
req GET /config
req GET /config/s1-value
req GET "/config/s1-value?defaultToGlobal=true"
req GET /config/never-registered
req GET "/config/never-registered?defaultToGlobal=true"

echo "## compatibility under the global default"
req POST /compatibility/subjects/s1-value/versions/latest "$V2"
req POST "/compatibility/subjects/s1-value/versions/latest?verbose=true" "$V2"
req POST /subjects/s1-value/versions "$V2"

echo "## subject-level BACKWARD"
req POST /subjects/s2-value/versions "$V1"
req PUT /config/s2-value '{"compatibility":"BACKWARD"}'
req GET /config/s2-value
req POST /compatibility/subjects/s2-value/versions/latest "$V2"
req POST "/compatibility/subjects/s2-value/versions/latest?verbose=true" "$V2"
req POST /compatibility/subjects/s2-value/versions/latest "$V2OK"
req POST /compatibility/subjects/s2-value/versions/1 "$V2"
req POST /compatibility/subjects/s2-value/versions "$V2"
req POST /subjects/s2-value/versions "$V2"
req POST /subjects/s2-value/versions "$V2OK"
req POST /subjects/s2-value/versions "$V1"
req GET /subjects/s2-value/versions
req POST /compatibility/subjects/nope/versions/latest "$V2"
req POST /compatibility/subjects/nope/versions/1 "$V2"
req POST /compatibility/subjects/nope/versions "$V2"
req POST /compatibility/subjects/s2-value/versions/abc "$V2"
req POST /compatibility/subjects/s2-value/versions/latest "$BAD"
req PUT /config/s2-value '{"compatibility":"NOPE"}'
req PUT /config/s2-value '{"compatibility":"NONE"}'
req DELETE /config/s2-value
req GET /config/s2-value

echo "## global level"
req PUT /config '{"compatibility":"NONE"}'
req GET /config
req PUT /config '{"compatibility":"BACKWARD"}'
req GET /config
req POST /subjects/s3-value/versions "$V1"
req POST /subjects/s3-value/versions "$V2"

echo "## invalid requests"
req POST /subjects/bad-value/versions "$BAD"
req POST /subjects/bad-value/versions '{"schema":"this is not json"}'
req POST /subjects/bad-value/versions '{"schema":"{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"a\",\"type\":\"no.such.Type\"}]}"}'
req POST /subjects/bad-value/versions '{"schema":""}'
req POST /subjects/bad-value/versions '{"nothing":1}'
req POST /subjects/bad-value/versions 'not json at all'
req POST /subjects/bad-value/versions '{"schemaType":"BOGUS","schema":"\"string\""}'
req POST /subjects/ct-value/versions "$V1" application/json
req POST /subjects/ct-value/versions "$V1" application/vnd.schemaregistry+json
req POST /subjects/ct-value/versions "$V1" application/octet-stream

echo "## deletes"
req DELETE /subjects/other-value/versions/1
req DELETE /subjects/other-value
req GET /subjects
req DELETE "/subjects/other-value?permanent=true"
req GET /schemas/ids/1
req GET /mode
req GET /schemas/types
