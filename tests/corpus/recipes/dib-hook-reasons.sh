# dib (python -m dib) on this machine (root): an element's root.d hook, run before
# debootstrap, fails for a reason only its exit status, its #! line or its own error
# line tells: CRLF line endings, a missing interpreter, SIGKILL, SIGSEGV, a Python
# exception, a resource limit, an unset variable. dib's failure record carries the reason.
set -u
cd "$REPO"
export DIB_RELEASE=bookworm DIB_DISTRIBUTION_MIRROR="$MIRROR"
elements=$WORK/elements
# hook ELEMENT CONTENT: root.d/01-ELEMENT of a new element
hook() {
    mkdir -p "$elements/$1/root.d"
    printf '%s' "$2" > "$elements/$1/root.d/01-$1"
    chmod 755 "$elements/$1/root.d/01-$1"
}
dib() { local log=$1; shift; echo "+ python -m dib $*" > "$OUT/$log"
        ELEMENTS_PATH=$elements "$PYTHON" -m dib "$@" >> "$OUT/$log" 2>&1
        echo "exit status $?" >> "$OUT/$log"; }
build() { dib "$1.log" -o "$WORK/$1/img" -t tar --image-cache "$WORK/cache" debian-minimal "$2"; }

# Saved on Windows: every line ends in CR LF, the #! line too.
hook corpus-crlf "$(printf '#!/bin/bash\r\nset -eu\r\necho configuring\r\n')"
build hook-crlf corpus-crlf
# An interpreter the build host does not have.
hook corpus-py2 '#!/usr/bin/python2.7
print "configuring"
'
build hook-no-interpreter corpus-py2
# A helper killed by SIGKILL (timeout -s KILL: what the OOM killer does too).
hook corpus-sigkill '#!/bin/bash
set -eu
echo "corpus-sigkill: indexing the package pool"
timeout -s KILL 1 sleep 30
'
build hook-sigkill corpus-sigkill
# A helper that crashes: a NULL pointer read through ctypes.
hook corpus-segv "#!/bin/bash
set -eu
echo 'corpus-segv: probing the image format'
python3 -c 'import ctypes; ctypes.string_at(0)'
"
build hook-segfault corpus-segv
# A Python hook raising on a missing key of its configuration.
hook corpus-python "#!/usr/bin/env python3
import json
config = json.loads('{\"release\": \"bookworm\"}')
print('corpus-python: building for', config['release'], 'on', config['arch'])
"
build hook-python-exception corpus-python
# A hook under a small open-files limit that opens one file per package.
hook corpus-nofile "#!/bin/bash
set -eu
ulimit -n 32
python3 -c '
handles = [open(\"/dev/null\") for _ in range(64)]
print(len(handles))
'
"
build hook-too-many-open-files corpus-nofile
# set -u and a variable nobody set.
hook corpus-unset '#!/bin/bash
set -eu
echo "corpus-unset: site is ${DIB_CORPUS_SITE}"
'
build hook-unbound-variable corpus-unset
