/* sandboxer security probe: tries forbidden things from inside a sandbox.
 *
 * Built with `gcc -static` by integration/test_security.py and copied into the
 * sandbox (the built-in images have no compiler and no Python).
 *
 *   probe syscalls   each syscall below, called directly: prints NAME=RESULT per line,
 *                    RESULT being OK (it succeeded) or the errno name (EPERM, ...)
 *   probe ids        prints "uid=U euid=E" (run setuid to see whether euid changes)
 *
 * Every call is made with arguments that pass the permission check first and then fail
 * harmlessly (bad magic, a missing path, too many segments), so a refusal reads EPERM
 * (or EACCES/ENOSYS) and an allowed call reads OK or a harmless argument error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

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

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "syscalls") == 0)
        return syscalls();
    if (argc == 2 && strcmp(argv[1], "ids") == 0) {
        printf("uid=%d euid=%d\n", (int)getuid(), (int)geteuid());
        return 0;
    }
    fprintf(stderr, "usage: %s syscalls|ids\n", argv[0]);
    return 2;
}
