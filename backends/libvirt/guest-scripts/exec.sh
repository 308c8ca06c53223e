#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset IFS ENV BASH_ENV CDPATH
. /etc/sandboxer/sandbox.conf
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
    uid=${user%%:*}
    case $uid in *[!0-9]*) uid=$(id -u -- "$uid") || exit 126 ;; esac
    case $user in
        *:*) gid=${user#*:} ;;
        *) gid=$(id -g -- "$uid" 2>/dev/null) || gid=$uid ;;
    esac
    while IFS=: read -r _ _ entry_uid _ _ entry_home _; do
        [ "$entry_uid" = "$uid" ] && home=$entry_home && break
    done < /etc/passwd
fi

# After setpriv, as the user: env enters the working directory, sets the caller's
# variables (HOME first, so theirs wins) and looks the command up in the caller's PATH.
set -- "HOME=$home" "$@"
[ -n "$workdir" ] && set -- --chdir="$workdir" "$@"
set -- -- /usr/bin/env -i "$@"
[ -n "$user" ] && set -- --reuid="$uid" --regid="$gid" --clear-groups "$@"
[ "$SBX_NNP" = 1 ] && set -- --nnp "$@"
[ -n "$SBX_BOUNDING" ] && set -- --bounding-set="$SBX_BOUNDING" --inh-caps="$SBX_BOUNDING" "$@"
[ -n "$SBX_AMBIENT" ] && set -- --ambient-caps="$SBX_AMBIENT" "$@"
[ "$1" = -- ] && shift && exec "$@"
exec /usr/bin/setpriv "$@"
