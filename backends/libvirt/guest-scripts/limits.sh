echo "+pids +memory +cpu" > /sys/fs/cgroup/cgroup.subtree_control
mkdir -p /sys/fs/cgroup/sandbox
[ -n "$SBX_PIDS" ] && echo "$SBX_PIDS" > /sys/fs/cgroup/sandbox/pids.max
if [ -n "$SBX_MEMORY" ]; then
    echo "$SBX_MEMORY" > /sys/fs/cgroup/sandbox/memory.max
    echo 0 > /sys/fs/cgroup/sandbox/memory.swap.max
fi
[ -n "$SBX_CPU_MAX" ] && echo "$SBX_CPU_MAX" > /sys/fs/cgroup/sandbox/cpu.max
