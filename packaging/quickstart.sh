#!/bin/sh
# Quick start: installs what is missing, builds Switchboard (release), and runs
# the broker in the foreground on config/examples/quickstart.yaml.
# Data goes to ./data under the repository. Ctrl-C stops it.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
"$top/packaging/deps-debian.sh"
cmake --preset release >/dev/null
cmake --build --preset release
bin="$top/build/release"
cat <<MSG

Switchboard is starting with config/examples/quickstart.yaml. In another terminal try:
  $bin/tools/sbctl/sbctl -e tcp:127.0.0.1:7878 pub lines/demo "hello"
  $bin/tools/sbctl/sbctl -e tcp:127.0.0.1:7878 sub lines-to-audit --count 1
  $bin/tools/sbctl/sbctl stats
  printf 'one\ntwo\n' > /dev/tcp/127.0.0.1/7879      # raw lines (bash)
  mosquitto_sub -p 1884 -t 'lines/#' -v &            # MQTT sees the same messages
  mosquitto_pub -p 1884 -q 1 -t lines/mqtt -m hi

MSG
exec "$bin/service/switchboard" run --config config/examples/quickstart.yaml
