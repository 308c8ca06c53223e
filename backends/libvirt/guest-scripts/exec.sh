#!/bin/sh
export PATH=@TOOLS_PATH@
unset IFS ENV BASH_ENV CDPATH
. @CONF@/sandbox.conf
id=$1 workdir=$2 user=$3 input=$4 output=$5 errors=$6
shift 7
cgroups=/sys/fs/cgroup/sandbox
# Join our own cgroup first: until we are in it, another exec's sweep below may remove it.
tries=0
until mkdir -p "$cgroups/exec-$id" && echo $$ 2>/dev/null > "$cgroups/exec-$id/cgroup.procs"; do
    tries=$((tries + 1))
    [ $tries -lt 20 ] || exit 125
done
rmdir "$cgroups"/exec-* 2>/dev/null  # cgroups of finished commands; busy ones (ours) stay
case $input in
    -) ;;  # the data qemu-ga writes to our stdin
    "") exec < /dev/null ;;
    *) exec < "$input"; rm -f "$input" ;;
esac
[ -n "$output" ] && exec > "$output"
[ -n "$errors" ] && exec 2> "$errors"
[ -n "$user" ] || user=$SBX_USER
home=/
if [ -n "$user" ]; then
    # /etc/passwd read here, not through NSS: in an OCI image it is the image's, and the
    # image's libc is never loaded by a root-run step.
    uid=${user%%:*} gid="" found="" by_uid=""
    # A number is always a uid (as runc has it), never the name of an entry.
    case $uid in *[!0-9]*|"") ;; *) by_uid=1 ;; esac
    [ -f /etc/passwd ] && while IFS=: read -r entry_name _ entry_uid entry_gid _ entry_home _; do
        key=$entry_name
        [ -n "$by_uid" ] && key=$entry_uid
        if [ "$key" = "$uid" ]; then
            uid=$entry_uid gid=$entry_gid home=$entry_home found=1
            break
        fi
    done < /etc/passwd
    [ -n "$found" ] || gid=$uid
    case $user in *:*) gid=${user#*:} ;; esac
    # Numbers only (a name /etc/passwd does not know stays one), and never 4294967295,
    # which setpriv takes as "keep": an image's passwd could otherwise keep root.
    for id in "$uid" "$gid"; do
        case $id in *[!0-9]*|"") exit 126 ;; esac
        [ ${#id} -le 10 ] && [ "$id" -le 4294967294 ] || exit 126
    done
fi

# After setpriv, as the user: env enters the working directory, sets the caller's
# variables (HOME first, so theirs wins) and looks the command up in the caller's PATH.
set -- "HOME=$home" "$@"
[ -n "$workdir" ] && set -- --chdir="$workdir" "$@"
set -- -- @ENV@ -i "$@"
# setpriv looks each id up as a name first (getpwnam, as root): no passwd name starts with
# a blank, so " N" never matches a hostile image's entry named "N", and is read as N.
[ -n "$user" ] && set -- --reuid=" $uid" --regid=" $gid" --clear-groups "$@"
[ "$SBX_NNP" = 1 ] && set -- --nnp "$@"
[ -n "$SBX_BOUNDING" ] && set -- --bounding-set="$SBX_BOUNDING" --inh-caps="$SBX_BOUNDING" "$@"
[ -n "$SBX_AMBIENT" ] && set -- --ambient-caps="$SBX_AMBIENT" "$@"
[ "$1" = -- ] && shift && exec "$@"
exec @SETPRIV@ "$@"
