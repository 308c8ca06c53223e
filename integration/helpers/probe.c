/* sandboxer security probe: tries forbidden things from inside a sandbox.
 *
 * Built with `gcc -static` by integration/test_security.py and copied into the
 * sandbox (the built-in images have no compiler and no Python).
 *
 *   probe syscalls   each syscall below, called directly: prints NAME=RESULT per line,
 *                    RESULT being OK (it succeeded) or the errno name (EPERM, ...)
 *   probe ids        prints "uid=U euid=E" (run setuid to see whether euid changes)
 *   probe moby       like syscalls, for calls Docker's (moby's) default profile denies
 *   probe strict     like syscalls, for what only the strict profile denies, and controls
 *   probe threads    clone3's errno, then a pthread_create/join (glibc falls back to clone
 *                    only when clone3 reads ENOSYS)
 *   probe upper      filtered arguments with their upper 32 bits set, which the kernel
 *                    drops (it reads an int): every one must be refused
 *
 * Every call is made with arguments that pass the permission check first and then fail
 * harmlessly (bad magic, a missing path, too many segments), so a refusal reads EPERM
 * (or EACCES/ENOSYS) and an allowed call reads OK or a harmless argument error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Newer than this libc's headers (x86-64 numbers). */
#define NR_cachestat 451
#define NR_lsm_get_self_attr 459
#define NR_lsm_set_self_attr 460
#define NR_lsm_list_modules 461

#define KEYCTL_GET_KEYRING_ID 0
#define KEY_SPEC_SESSION_KEYRING -3
#define KEY_SPEC_PROCESS_KEYRING -2
#define UFFD_USER_MODE_ONLY 1

static void report(const char *name, long rc) {
    if (rc >= 0) {
        printf("%s=OK\n", name);
    } else {
        const char *text = strerrorname_np(errno);
        printf("%s=%s\n", name, text ? text : "UNKNOWN");
    }
}

/* A successful call may return a descriptor: close it, report OK. */
static long closing(long rc) {
    if (rc >= 0) {
        close((int)rc);
        return 0;
    }
    return rc;
}

static long try_bpf(void) {
    /* union bpf_attr, BPF_MAP_CREATE of a one-entry array map. */
    uint32_t attr[32] = {0};
    attr[0] = 2; /* BPF_MAP_TYPE_ARRAY */
    attr[1] = 4; /* key_size */
    attr[2] = 4; /* value_size */
    attr[3] = 1; /* max_entries */
    return closing(syscall(SYS_bpf, 0 /* BPF_MAP_CREATE */, attr, sizeof attr));
}

static long try_perf_event_open(void) {
    /* struct perf_event_attr: a software CPU clock on ourselves, user space only. */
    uint64_t attr[16] = {0};
    uint32_t *words = (uint32_t *)attr;
    words[0] = 1;               /* type = PERF_TYPE_SOFTWARE */
    words[1] = sizeof attr;     /* size */
    attr[1] = 0;                /* config = PERF_COUNT_SW_CPU_CLOCK */
    attr[5] = 1 | (1 << 5) | (1 << 6); /* disabled, exclude_kernel, exclude_hv */
    return closing(syscall(SYS_perf_event_open, attr, 0, -1, -1, 0));
}

static long try_clock_settime(void) {
    /* Setting the clock to what it reads: no visible change if it is allowed. */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return syscall(SYS_clock_settime, CLOCK_REALTIME, &now);
}

static long try_open_by_handle_at(void) {
    /* A well-formed handle to nothing: ESTALE once past the CAP_DAC_READ_SEARCH check. */
    struct { unsigned int bytes; int type; unsigned char data[8]; } handle = {8, 1, {0}};
    return closing(syscall(SYS_open_by_handle_at, AT_FDCWD, &handle, O_RDONLY));
}

static int syscalls(void) {
    static const char module[16] = {0};
    report("keyctl", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0));
    report("add_key", syscall(SYS_add_key, "user", "sandboxer-probe", "x", 1,
                              KEY_SPEC_PROCESS_KEYRING));
    report("bpf", try_bpf());
    report("perf_event_open", try_perf_event_open());
    report("userfaultfd", closing(syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY)));
    /* More segments than KEXEC_SEGMENT_MAX: EINVAL once past the CAP_SYS_BOOT check. */
    report("kexec_load", syscall(SYS_kexec_load, 0, 1000, NULL, 0));
    /* Not an ELF module: ENOEXEC once past the CAP_SYS_MODULE check. */
    report("init_module", syscall(SYS_init_module, module, sizeof module, ""));
    report("open_by_handle_at", try_open_by_handle_at());
    report("swapon", syscall(SYS_swapon, "/nonexistent-sandboxer-swap", 0));
    /* Wrong magic numbers: EINVAL once past the CAP_SYS_BOOT check. */
    report("reboot", syscall(SYS_reboot, 0, 0, 0, NULL));
    report("clock_settime", try_clock_settime());
    report("acct", syscall(SYS_acct, "/nonexistent-sandboxer-acct"));
    return 0;
}

/* clone with namespace flags: a child that exits at once, if it is allowed at all. */
static long try_clone(unsigned long flags) {
    long pid = syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, 0);
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid((pid_t)pid, NULL, 0);
    return pid;
}

static long try_socket(int family, int type) {
    return closing(socket(family, type, 0));
}

/* Calls moby's default profile denies (to a sandbox holding no capability). Arguments are
 * chosen so that, were the call let through, most would read OK or a harmless argument
 * error instead of EPERM; calls the kernel no longer has read ENOSYS only if let through. */
static int moby(void) {
    uint64_t buf[64] = {0};
    struct timeval bad_time = {0, 2000000};
    report("acct", syscall(SYS_acct, "/nonexistent-sandboxer-acct"));
    report("add_key", syscall(SYS_add_key, "user", "sandboxer-probe", "x", 1,
                              KEY_SPEC_PROCESS_KEYRING));
    report("bpf", try_bpf());
    report("chroot", syscall(SYS_chroot, "/nonexistent-sandboxer"));
    report("clock_settime", try_clock_settime());
    report("clone(CLONE_NEWUSER)", try_clone(CLONE_NEWUSER));
    report("clone(CLONE_NEWNS)", try_clone(CLONE_NEWNS));
    report("clone(CLONE_NEWNET)", try_clone(CLONE_NEWNET));
    report("clone(CLONE_NEWPID)", try_clone(CLONE_NEWPID));
    report("create_module", syscall(SYS_create_module, "x", 0));
    report("delete_module", syscall(SYS_delete_module, "sandboxer_nonexistent", O_NONBLOCK));
    report("fanotify_init", closing(syscall(SYS_fanotify_init, 0, O_RDONLY)));
    report("finit_module", syscall(SYS_finit_module, -1, "", 0));
    report("fsconfig", syscall(SYS_fsconfig, -1, 0, NULL, NULL, 0));
    report("fsmount", closing(syscall(SYS_fsmount, -1, 0, 0)));
    report("fsopen", closing(syscall(SYS_fsopen, "sandboxer-nonexistent-fs", 0)));
    report("fspick", closing(syscall(SYS_fspick, AT_FDCWD, "/nonexistent-sandboxer", 0)));
    report("get_kernel_syms", syscall(SYS_get_kernel_syms, NULL));
    report("get_mempolicy", syscall(SYS_get_mempolicy, NULL, NULL, 0, NULL, 0));
    report("init_module", syscall(SYS_init_module, buf, 16, ""));
    report("io_uring_setup", closing(syscall(SYS_io_uring_setup, 0, NULL)));
    report("io_uring_enter", syscall(SYS_io_uring_enter, -1, 0, 0, 0, NULL, 0));
    report("io_uring_register", syscall(SYS_io_uring_register, -1, 0, NULL, 0));
    report("ioperm", syscall(SYS_ioperm, 0x80, 1, 0));
    report("iopl", syscall(SYS_iopl, 0));
    report("kexec_file_load", syscall(SYS_kexec_file_load, -1, -1, 0, "", 0));
    report("kexec_load", syscall(SYS_kexec_load, 0, 1000, NULL, 0));
    report("keyctl", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0));
    report("lookup_dcookie", syscall(SYS_lookup_dcookie, 0, NULL, 0));
    report("lsm_get_self_attr", syscall(NR_lsm_get_self_attr, 0, NULL, NULL, 0));
    report("lsm_list_modules", syscall(NR_lsm_list_modules, NULL, NULL, 0));
    report("lsm_set_self_attr", syscall(NR_lsm_set_self_attr, 0, NULL, 0, 0));
    report("mbind", syscall(SYS_mbind, NULL, 0, 0, NULL, 0, 0));
    report("mount", syscall(SYS_mount, "none", "/nonexistent-sandboxer", "tmpfs", 0, NULL));
    report("mount_setattr", syscall(SYS_mount_setattr, -1, "", 0, NULL, 0));
    report("move_mount", syscall(SYS_move_mount, -1, "", -1, "", 0));
    report("move_pages", syscall(SYS_move_pages, 0, 0, NULL, NULL, NULL, 0));
    report("nfsservctl", syscall(SYS_nfsservctl, 0, NULL, NULL));
    report("open_by_handle_at", try_open_by_handle_at());
    report("open_tree", closing(syscall(SYS_open_tree, AT_FDCWD, "/nonexistent-sandboxer", 0)));
    report("perf_event_open", try_perf_event_open());
    report("personality(READ_IMPLIES_EXEC)", syscall(SYS_personality, 0x0400000));
    report("pidfd_getfd", closing(syscall(SYS_pidfd_getfd, -1, 0, 0)));
    report("pivot_root", syscall(SYS_pivot_root, "/nonexistent-a", "/nonexistent-b"));
    report("process_madvise", syscall(SYS_process_madvise, -1, NULL, 0, 0, 0));
    report("query_module", syscall(SYS_query_module, NULL, 0, NULL, 0, NULL));
    report("quotactl", syscall(SYS_quotactl, 0, NULL, 0, NULL));
    report("quotactl_fd", syscall(SYS_quotactl_fd, -1, 0, 0, NULL));
    report("reboot", syscall(SYS_reboot, 0, 0, 0, NULL));
    report("request_key", syscall(SYS_request_key, "user", "sandboxer-nonexistent", NULL, 0));
    report("set_mempolicy", syscall(SYS_set_mempolicy, 0, NULL, 0));
    report("set_mempolicy_home_node", syscall(SYS_set_mempolicy_home_node, 0, 0, 0, 0));
    report("setdomainname", syscall(SYS_setdomainname, "x", 1000));
    report("sethostname", syscall(SYS_sethostname, "x", 1000));
    report("setns", syscall(SYS_setns, -1, 0));
    report("settimeofday", syscall(SYS_settimeofday, &bad_time, NULL));
    report("socket(AF_ALG)", try_socket(38, SOCK_SEQPACKET));
    report("socket(AF_VSOCK)", try_socket(40, SOCK_STREAM));
    report("swapoff", syscall(SYS_swapoff, "/nonexistent-sandboxer-swap"));
    report("swapon", syscall(SYS_swapon, "/nonexistent-sandboxer-swap", 0));
    report("_sysctl", syscall(SYS__sysctl, NULL));
    report("syslog", syscall(SYS_syslog, 10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0));
    report("umount2", syscall(SYS_umount2, "/nonexistent-sandboxer", 0));
    report("unshare", syscall(SYS_unshare, 0));
    report("uselib", syscall(SYS_uselib, "/nonexistent-sandboxer"));
    report("userfaultfd", closing(syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY)));
    report("ustat", syscall(SYS_ustat, 0, buf));
    return 0;
}

/* What strict denies beyond hardened, and what it must still allow (the *_ok lines). */
static int strict(void) {
    char mine[8] = "abcdefg", copy[8] = {0};
    struct iovec local = {copy, sizeof copy}, remote = {mine, sizeof mine};
    pid_t self = getpid();
    report("ptrace", syscall(SYS_ptrace, 12 /* PTRACE_GETREGS */, self, NULL, copy));
    report("process_vm_readv", syscall(SYS_process_vm_readv, self, &local, 1, &remote, 1, 0));
    report("process_vm_writev", syscall(SYS_process_vm_writev, self, &local, 1, &remote, 1, 0));
    report("kcmp", syscall(SYS_kcmp, self, self, 1 /* KCMP_VM */, 0, 0));
    report("mknod(S_IFCHR)", mknod("/tmp/sandboxer-chr", S_IFCHR | 0600, makedev(1, 3)));
    report("mknodat(S_IFBLK)", mknodat(AT_FDCWD, "/tmp/sandboxer-blk", S_IFBLK | 0600,
                                       makedev(7, 0)));
    report("mknod(S_IFIFO)_ok", mknod("/tmp/sandboxer-fifo", S_IFIFO | 0600, 0));
    unlink("/tmp/sandboxer-fifo");
    report("unshare(CLONE_NEWNS)", syscall(SYS_unshare, CLONE_NEWNS));
    report("unshare(CLONE_NEWUSER)", syscall(SYS_unshare, CLONE_NEWUSER));
    report("unshare(CLONE_NEWNET)", syscall(SYS_unshare, CLONE_NEWNET));
    report("unshare(CLONE_NEWUTS)", syscall(SYS_unshare, CLONE_NEWUTS));
    report("unshare(CLONE_NEWIPC)", syscall(SYS_unshare, CLONE_NEWIPC));
    report("unshare(CLONE_NEWPID)", syscall(SYS_unshare, CLONE_NEWPID));
    report("unshare(CLONE_NEWCGROUP)", syscall(SYS_unshare, CLONE_NEWCGROUP));
    report("clone(CLONE_NEWUSER)", try_clone(CLONE_NEWUSER));
    report("setns", syscall(SYS_setns, -1, 0));
    report("socket(AF_NETLINK)", try_socket(AF_NETLINK, SOCK_RAW));
    report("socket(AF_PACKET)", try_socket(AF_PACKET, SOCK_DGRAM));
    report("socket(AF_INET)_ok", try_socket(AF_INET, SOCK_STREAM));
    report("socket(AF_UNIX)_ok", try_socket(AF_UNIX, SOCK_STREAM));
    report("fork_ok", try_clone(0));
    return 0;
}

/* A filter comparing all 64 bits by range (family > 40) lets 1<<32 | AF_VSOCK through, and
 * the kernel then opens AF_VSOCK; only EQ (or a mask) on the low word holds. */
#define HIGH (1UL << 32)

static int upper(void) {
    report("socket(AF_VSOCK|1<<32)", closing(syscall(SYS_socket, HIGH | 40, SOCK_STREAM, 0)));
    report("socket(AF_ALG|1<<32)", closing(syscall(SYS_socket, HIGH | 38, SOCK_SEQPACKET, 0)));
    report("socket(AF_INET|1<<32)", closing(syscall(SYS_socket, HIGH | AF_INET, SOCK_STREAM, 0)));
    report("personality(query|1<<32)", syscall(SYS_personality, HIGH | 0xffffffffUL));
    report("clone(CLONE_NEWUSER|1<<32)", try_clone(HIGH | CLONE_NEWUSER));
    report("mknod(S_IFCHR|1<<32)", syscall(SYS_mknod, "/tmp/sandboxer-chr-high",
                                           HIGH | S_IFCHR | 0600, makedev(1, 3)));
    return 0;
}

static void *thread_main(void *arg) {
    return arg;
}

static int threads(void) {
    pthread_t thread;
    void *result = NULL;
    /* NULL arguments: EINVAL or EFAULT had the call been let through to the kernel. */
    report("clone3", syscall(SYS_clone3, NULL, 0));
    int rc = pthread_create(&thread, NULL, thread_main, (void *)1);
    if (rc == 0)
        rc = pthread_join(thread, &result);
    printf("pthread=%s\n", rc == 0 && result == (void *)1 ? "OK" : strerrorname_np(rc));
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "syscalls") == 0)
        return syscalls();
    if (argc == 2 && strcmp(argv[1], "moby") == 0)
        return moby();
    if (argc == 2 && strcmp(argv[1], "strict") == 0)
        return strict();
    if (argc == 2 && strcmp(argv[1], "threads") == 0)
        return threads();
    if (argc == 2 && strcmp(argv[1], "upper") == 0)
        return upper();
    if (argc == 2 && strcmp(argv[1], "ids") == 0) {
        printf("uid=%d euid=%d\n", (int)getuid(), (int)geteuid());
        return 0;
    }
    fprintf(stderr, "usage: %s syscalls|moby|strict|threads|upper|ids\n", argv[0]);
    return 2;
}
