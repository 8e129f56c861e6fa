#!/bin/sh
# Fail fast, in one line, when Java 17+ (needed by Spark 4) is missing.
hint="install Java 17: apt-get install -y openjdk-17-jre-headless (Debian 12/Ubuntu; openjdk-21-jre-headless on Debian 13), brew install openjdk@17 (macOS), or set JAVA_HOME"
if [ -n "$JAVA_HOME" ] && [ -x "$JAVA_HOME/bin/java" ]; then java="$JAVA_HOME/bin/java"; else java=$(command -v java); fi
if [ -z "$java" ]; then echo "error: Java not found; Spark 4 needs Java 17 or newer -- $hint" >&2; exit 1; fi
version=$("$java" -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\)\(\.\([0-9]*\)\)\{0,1\}.*/\1 \3/p' | head -n 1)
major=${version%% *}; minor=${version#* }
[ "$major" = 1 ] && major=$minor
if [ -z "$major" ] || [ "$major" -lt 17 ]; then echo "error: Java ${major:-unknown} at $java is too old; Spark 4 needs Java 17 or newer -- $hint" >&2; exit 1; fi
