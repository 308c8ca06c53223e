#!/bin/sh
cgroup=/sys/fs/cgroup/sandbox/exec-$1
[ -e "$cgroup/cgroup.kill" ] && echo 1 > "$cgroup/cgroup.kill"
