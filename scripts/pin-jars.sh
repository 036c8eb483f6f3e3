#!/usr/bin/env bash
# Rewrites FOLDER/jars.sha256 from what Maven resolves for FOLDER/pom.xml today, e.g. after a
# version bump: `scripts/pin-jars.sh docker/broker/maven`. Review the diff before committing it:
# the sums are what every later image build is checked against.
set -euo pipefail
folder="${1:?usage: scripts/pin-jars.sh FOLDER (holding pom.xml)}"
[ -f "$folder/pom.xml" ] || { echo "no $folder/pom.xml" >&2; exit 2; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
mvn -B -q -Dstyle.color=never -f "$folder/pom.xml" dependency:copy-dependencies -DoutputDirectory="$out/jars"
(cd "$out/jars" && LC_ALL=C sha256sum -- *.jar) >"$folder/jars.sha256"
echo "pinned $(wc -l <"$folder/jars.sha256") jars in $folder/jars.sha256" >&2
