# Sourced (POSIX sh) by dib's mkinitramfs stand-in into the shell that then sources the
# real /usr/sbin/mkinitramfs; never in the image. For every module of a stock kernel,
# initramfs-tools' copy_file asks `realpath -ms`, `readlink -f` and `realpath -s` about
# the path and runs `mkdir -p` on its directory: about 10,000 exec calls, most of
# mkinitramfs's time on a small machine. These functions answer in the shell the calls
# whose answer needs no tool, and hand every other call to the real tool (`command`):
#   - an absolute path without "." or ".." components is its own lexical normal form once
#     repeated and trailing slashes go (realpath -ms);
#   - and its own canonical form (readlink -f, realpath -s) when every component but the
#     last is a directory, no component is a symlink and it does not end in a slash;
#   - `readlink -f /bin` is asked before every module: its answer is read once, before
#     mkinitramfs starts (nothing changes /bin while it runs);
#   - `mkdir -p DIR` does nothing when DIR is a directory;
#   - `modinfo -k VERSION -F firmware MODULE`, asked for every module copied, is the
#     answer file kmodinfo.py wrote for MODULE from its .modinfo section (the bytes
#     modinfo prints: tests/unit/dib/test_kmodinfo.py; all 4,022 modules of bookworm's
#     6.1 kernel gave modinfo's own answers), when it wrote one.
# The image gets the initramfs the tools' own answers would give: tests/unit/dib compares
# each answer with the tool's, tests/integration/test_initramfs_paths.py the initramfs
# with the real mkinitramfs's, byte for byte.

_dib_bin_canonical=$(command readlink -f /bin 2>/dev/null) || _dib_bin_canonical=
# modinfo's firmware answers for the kernel being packed (shims/kmodinfo.py wrote them:
# one file per module, below the modules directory's own layout; none: modinfo answers).
_dib_kmod_version=${_DIB_KMOD_VERSION-}
_dib_kmod_answers=${_DIB_KMOD_ANSWERS-}
unset _DIB_KMOD_VERSION _DIB_KMOD_ANSWERS

_dib_normal() { # PATH: its lexical normal form into _dib_path; fail if that needs a tool
    local path="$1"
    case $path in
        /*) ;;
        *) return 1 ;;
    esac
    while :; do
        case $path in
            *//*) path="${path%%//*}/${path#*//}" ;;
            *) break ;;
        esac
    done
    while :; do
        case $path in
            / ) break ;;
            */) path="${path%/}" ;;
            *) break ;;
        esac
    done
    case $path in
        */. | */.. | */./* | */../*) return 1 ;;
    esac
    _dib_path=$path
}

_dib_no_links() { # NORMAL-PATH: every component but the last a directory, none a symlink
    local rest="${1#/}" prefix=""
    while :; do
        case $rest in
            */*)
                prefix="$prefix/${rest%%/*}"
                rest="${rest#*/}"
                [ -d "$prefix" ] && [ ! -h "$prefix" ] || return 1
                ;;
            *)
                [ ! -h "$1" ]
                return
                ;;
        esac
    done
}

_dib_canonical() { # PATH: its normal form into _dib_path when that is its canonical form
    case $1 in
        */) return 1 ;; # asks for a directory: the tool checks
    esac
    _dib_normal "$1" && _dib_no_links "$_dib_path"
}

realpath() {
    if [ "$#" -eq 2 ] && [ "$1" = -ms ] && _dib_normal "$2"; then
        printf '%s\n' "$_dib_path"
        return 0
    fi
    if [ "$#" -eq 2 ] && [ "$1" = -s ] && _dib_canonical "$2"; then
        printf '%s\n' "$_dib_path"
        return 0
    fi
    command realpath "$@"
}

readlink() {
    if [ "$#" -eq 2 ] && [ "$1" = -f ]; then
        if [ "$2" = /bin ] && [ -n "$_dib_bin_canonical" ]; then
            printf '%s\n' "$_dib_bin_canonical"
            return 0
        fi
        if _dib_canonical "$2"; then
            printf '%s\n' "$_dib_path"
            return 0
        fi
    fi
    command readlink "$@"
}

mkdir() {
    if [ "$#" -eq 2 ] && [ "$1" = -p ] && [ -d "$2" ]; then
        return 0
    fi
    command mkdir "$@"
}

modinfo() {
    if [ "$#" -eq 5 ] && [ "$1" = -k ] && [ "$3" = -F ] && [ "$4" = firmware ] \
        && [ -n "$_dib_kmod_answers" ] && [ "$2" = "$_dib_kmod_version" ] && _dib_normal "$5"; then
        case $_dib_path in
            "/lib/modules/$2/"*.ko)
                _dib_answer=$_dib_kmod_answers/${_dib_path#"/lib/modules/$2/"}
                if [ -f "$_dib_answer" ]; then
                    while IFS= read -r _dib_line; do
                        printf '%s\n' "$_dib_line"
                    done < "$_dib_answer"
                    return 0
                fi
                ;;
        esac
    fi
    command modinfo "$@"
}
