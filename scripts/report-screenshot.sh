#!/usr/bin/env bash
# Renders `privacy-router privacy-report --format html` in headless Chromium
# at 1,200 px and checks that nothing overflows the page: every table and
# every cell keeps its content inside the 1,200 px viewport (long field
# paths, record names and hashes must wrap).
#
#   scripts/report-screenshot.sh [OUT.png] [-- PRIVACY-REPORT ARGS...]
#
#   scripts/report-screenshot.sh                              # target/report-screenshot/privacy-report.png
#   scripts/report-screenshot.sh /tmp/r.png -- --registry-url http://registry:8081
#
# Two reports are rendered: the one the arguments ask for (default: the
# default topology over avro/), and a stress report over a copy of avro/
# with a user.created v2 that has very long field names, a long unbroken
# doc and an override. For each, the script writes a screenshot of the top
# of the page (OUT.png) and of the section with the longest paths
# (OUT-fields.png; the stress report's as OUT-stress.png), then loads a
# copy of the page with a tiny inline script (the report's own
# Content-Security-Policy allows none) that measures the layout at 1,200 px
# and writes the verdict into the title; `--dump-dom` prints it. Exit
# status 1 when anything overflows.
#
# Needs Debian's `chromium` (installed with apt-get when missing and run as
# root) and cargo. Takes about 15 s once the binary is built.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/report-screenshot/privacy-report.png
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  OUT=$1
  shift
fi
if [ $# -gt 0 ] && [ "$1" = "--" ]; then
  shift
fi
WIDTH=1200
HEIGHT=2000
mkdir -p "$(dirname "$OUT")"
OUT=$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")
BASE=${OUT%.png}

if ! command -v chromium > /dev/null; then
  echo "report-screenshot: installing chromium (Debian package)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium > /dev/null
fi

cargo build --quiet --bin privacy-router
BIN=$PWD/target/debug/privacy-router

WORK=$(mktemp -d)
PROFILE=$(mktemp -d)
trap 'rm -rf "$WORK" "$PROFILE"' EXIT

chrome() {
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$PROFILE" --window-size=$WIDTH,$HEIGHT "$@" 2> "$WORK/chromium.log"
}

# The measuring script: the page's width, and every table or cell whose
# content is wider than its box or reaches past the viewport.
cat > "$WORK/measure.js" <<'JS'
(function () {
  var width = window.innerWidth, bad = [];
  var page = document.documentElement.scrollWidth;
  if (page > width) bad.push('page ' + page + 'px');
  var boxes = document.querySelectorAll('table, th, td, p, li, h1, h2, h3');
  for (var i = 0; i < boxes.length; i++) {
    var el = boxes[i], r = el.getBoundingClientRect();
    if (r.right > width + 0.5) bad.push(el.tagName + ' right edge ' + Math.round(r.right) + 'px');
    else if (el.scrollWidth > el.clientWidth + 1 && el.tagName !== 'TABLE')
      bad.push(el.tagName + ' content ' + el.scrollWidth + 'px in ' + el.clientWidth + 'px: ' + (el.textContent || '').slice(0, 60));
    if (bad.length > 5) break;
  }
  document.title = 'OVERFLOW-CHECK ' + (bad.length ? 'FAIL ' + bad.join('; ') : 'ok width=' + width + ' scrollWidth=' + page);
})();
JS

# check NAME HTML SCREENSHOT_ANCHOR: screenshots and the overflow verdict.
check() {
  local name=$1 html=$2 anchor=$3 shot=$4
  chrome --screenshot="$shot" "file://$html" > /dev/null
  if [ -n "$anchor" ]; then
    # The section with the longest paths, on a page of its own (with the
    # report's style) so that it is at the top of the screenshot.
    python3 - "$html" "$anchor" "$WORK/$name-section.html" <<'PY'
import sys
html, anchor, out = sys.argv[1], sys.argv[2], sys.argv[3]
page = open(html).read()
head = page[: page.index("<body>") + len("<body>")]
start = page.index('<section id="%s">' % anchor)
end = page.index("</section>", start) + len("</section>")
open(out, "w").write(head + "\n" + page[start:end] + "\n</body>\n</html>\n")
PY
    chrome --screenshot="$BASE-$name-fields.png" "file://$WORK/$name-section.html" > /dev/null
  fi
  # A copy that may run the measuring script: the report's CSP allows no
  # script at all, so the copy's policy adds only this inline one.
  local probe="$WORK/$name-probe.html"
  python3 - "$html" "$WORK/measure.js" "$probe" <<'PY'
import sys
html, js, out = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
page = open(html).read()
csp = "default-src 'none'; style-src 'unsafe-inline'"
assert csp in page, "the report's Content-Security-Policy changed"
page = page.replace(csp, csp + "; script-src 'unsafe-inline'", 1)
page = page.replace("</body>", "<script>" + js + "</script></body>", 1)
open(out, "w").write(page)
PY
  local verdict
  verdict=$(chrome --run-all-compositor-stages-before-draw --virtual-time-budget=5000 --dump-dom "file://$probe" \
    | grep -o '<title>OVERFLOW-CHECK[^<]*</title>' || true)
  if [ -z "$verdict" ]; then
    echo "report-screenshot: $name: the measuring script did not run (see $WORK/chromium.log)" >&2
    cat "$WORK/chromium.log" >&2
    return 1
  fi
  verdict=${verdict#<title>}
  verdict=${verdict%</title>}
  echo "report-screenshot: $name: $verdict"
  [[ $verdict == "OVERFLOW-CHECK ok"* ]]
}

status=0

# 1. The report the arguments ask for.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(date +%s)} "$BIN" privacy-report --format html -o "$WORK/report.html" "$@"
anchor=$(grep -o 'section id="order.payment_authorized-v[0-9]*"' "$WORK/report.html" | head -1 | sed 's/section id="\(.*\)"/\1/' || true)
check report "$WORK/report.html" "$anchor" "$OUT" || status=1
[ -f "$BASE-report-fields.png" ] && mv "$BASE-report-fields.png" "$BASE-fields.png"

# 2. The stress report: long names, a long unbroken doc, an override.
cp -r avro "$WORK/avro"
python3 - "$WORK/avro/events/user" <<'PY'
import json, sys
d = sys.argv[1]
p = json.load(open(f"{d}/user.created.avsc"))
long = "notification_preferences_for_transactional_and_marketing_messages_by_channel"
p["fields"].append({
    "name": long, "privacy": "internal", "default": None,
    "doc": "See https://example.com/" + "a-very-long-unbroken-documentation-path-" * 6,
    "type": ["null", {"type": "record", "name": "NotificationPreferencesForTransactionalAndMarketingMessages",
        "privacy": "internal", "fields": [
            {"name": "per_channel_delivery_windows_in_the_recipients_local_time_zone",
             "type": {"type": "array", "items": {"type": "record", "name": "DeliveryWindowForOneChannelInLocalTime",
                 "fields": [{"name": "earliest_local_time_of_day_for_delivery_in_minutes", "type": "int", "privacy": "internal"}]}}}]}],
})
json.dump(p, open(f"{d}/user.created.v2.avsc", "w"), indent=2)
PY
sed 's|^classification:$|classification:\n  overrides:\n    com.privacyrouter.events.user.UserCreatedData: {locale: restricted}|' \
  topology/default.yaml > "$WORK/stress.yaml"
SOURCE_DATE_EPOCH=0 "$BIN" privacy-report --format html --topology "$WORK/stress.yaml" --schemas "$WORK/avro" -o "$WORK/stress.html"
check stress "$WORK/stress.html" "user.created-v2" "$BASE-stress-top.png" || status=1
[ -f "$BASE-stress-fields.png" ] && mv "$BASE-stress-fields.png" "$BASE-stress.png"
rm -f "$BASE-stress-top.png"

echo "report-screenshot: wrote $OUT, $BASE-fields.png and $BASE-stress.png"
exit $status
