#!/bin/bash
# dib test stand-in for @TOOL@: records each call (one line of arguments) and succeeds.
mkdir -p /var/lib/dib-standin
printf '%s\n' "$*" >> /var/lib/dib-standin/@TOOL@.calls
