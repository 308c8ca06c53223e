/*
 * sbx-service: sandboxer's command service inside a VM guest.
 *
 * It speaks a small framed protocol (see backends/libvirt/_frames.py, the other side)
 * over virtio-serial ports of its own, /dev/vportNpM named org.sandboxer.exec.N, whose
 * host ends are unix sockets the host connects to. Each START frame runs one command:
 * fork, join a fresh cgroup sandbox/svc-..., drop to the uid/gid/groups the host
 * resolved (numbers only) and to the profile's capability sets, then chdir and execve
 * with the caller's environment. Output streams back as it comes; stdin, signals and
 * terminal sizes stream in. The service runs as root under the profile's seccomp filter
 * and no_new_privs (bwrap), so every command inherits both.
 *
 * Every length the host sends is bounded; flow control is by credit, both ways, so no
 * buffer grows past its window.
 *
 * Usage: sbx-service [--nnp] [--bounding SPEC] [--ambient SPEC] PORT... [-- AGENT...]
 * SPEC is setpriv's capability syntax: "-all,+net_bind_service" or "-chown,-kill".
 * AGENT (qemu-ga) runs as our child; when it ends we end, so the guest init's restart
 * loop starts both again. As the PID namespace's first process we also reap orphans.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* Frame: magic "SB", type, 0, session (u32 BE), length (u32 BE), payload. */
#define HEADER 12
#define HELLO_SIZE 16
#define START_MAX (256 * 1024)
#define DATA_MAX (16 * 1024)
#define RX_MAX (HEADER + START_MAX)
#define WINDOW (256 * 1024) /* output and stdin credit per session */
#define CREDIT_MAX (64 * 1024 * 1024)
#define TX_HIGH (256 * 1024) /* stop reading commands' output past this */
#define MAX_PORTS 8
#define MAX_SESSIONS 64
#define MAX_ARGS 65536
#define MAX_GROUPS 64

enum {
    T_HELLO = 1, T_START = 2, T_STDIN = 3, T_STDIN_CLOSE = 4, T_SIGNAL = 5, T_RESIZE = 6,
    T_CREDIT = 7,
    G_STARTED = 16, G_STDOUT = 17, G_STDERR = 18, G_EXIT = 19, G_ERROR = 20, G_CREDIT = 21,
};

struct port {
    const char *path;
    int fd;
    int hup; /* the host is away: not polled until SIGIO or the next timeout */
    int desync; /* a bad frame: skip bytes until a HELLO header */
    unsigned char *rx;
    size_t rxlen;
    unsigned char *tx;
    size_t txlen, txcap;
};

struct session {
    int used;
    int port; /* -1: the host is gone, only reaping is left */
    uint32_t id;
    pid_t pid;
    int out, err, in; /* with a terminal: out is the master, in a dup of it */
    int tty;
    int exited, status;
    int in_closing;
    unsigned char *inbuf;
    size_t inlen;
    size_t in_done; /* stdin bytes written since the last credit frame */
    long credit;
    char cgroup[96];
};

static struct port ports[MAX_PORTS];
static int nports;
static struct session sessions[MAX_SESSIONS];
static int nnp;
static uint64_t bounding = ~0ULL, ambient;
static int have_bounding;
static unsigned long long boot_id;
static unsigned long counter;
static pid_t agent = -1;
static const char cgroup_root[] = "/sys/fs/cgroup/sandbox";

static void logmsg(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("sbx-service: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static const char *const cap_names[] = {
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast",
    "net_admin", "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio",
    "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
    "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write",
    "audit_control", "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm",
    "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
};

/* setpriv's syntax on top of `set`; -1 for a name we do not know (refuse to start). */
static int parse_caps(const char *spec, uint64_t *set) {
    char buf[1024];
    if (strlen(spec) >= sizeof buf) return -1;
    strcpy(buf, spec);
    for (char *save = NULL, *item = strtok_r(buf, ",", &save); item;
         item = strtok_r(NULL, ",", &save)) {
        int add = item[0] == '+';
        if (item[0] != '+' && item[0] != '-') return -1;
        const char *name = item + 1;
        if (strncmp(name, "cap_", 4) == 0) name += 4;
        if (strcmp(name, "all") == 0) {
            *set = add ? ~0ULL : 0;
            continue;
        }
        int found = -1;
        for (size_t i = 0; i < sizeof cap_names / sizeof *cap_names; i++)
            if (strcmp(cap_names[i], name) == 0) found = (int)i;
        if (found < 0) return -1;
        if (add) *set |= 1ULL << found;
        else *set &= ~(1ULL << found);
    }
    return 0;
}

static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static void set_nonblock(int fd) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* Queue one frame to the host. The buffer grows as needed; what feeds it is bounded by
 * credit (output) or by one reply per host frame, and the host reads it all. */
static void send_frame(int pi, int type, uint32_t id, const void *data, size_t len) {
    if (pi < 0 || ports[pi].hup) return;
    struct port *p = &ports[pi];
    if (p->txlen + HEADER + len > p->txcap) {
        size_t cap = p->txcap ? p->txcap : 65536;
        while (cap < p->txlen + HEADER + len) cap *= 2;
        unsigned char *tx = realloc(p->tx, cap);
        if (!tx) { logmsg("out of memory"); _exit(1); }
        p->tx = tx, p->txcap = cap;
    }
    unsigned char *h = p->tx + p->txlen;
    h[0] = 'S'; h[1] = 'B'; h[2] = (unsigned char)type; h[3] = 0;
    put32(h + 4, id);
    put32(h + 8, (uint32_t)len);
    if (len) memcpy(h + HEADER, data, len);
    p->txlen += HEADER + len;
}

static void send_error(int pi, uint32_t id, const char *message) {
    send_frame(pi, G_ERROR, id, message, strlen(message));
}

static struct session *find(int pi, uint32_t id) {
    for (int i = 0; i < MAX_SESSIONS; i++)
        if (sessions[i].used && sessions[i].port == pi && sessions[i].id == id) return &sessions[i];
    return NULL;
}

static void close_fd(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

/* The whole tree: everything the command started is in its cgroup. */
static void kill_tree(struct session *s) {
    char path[128];
    snprintf(path, sizeof path, "%s/cgroup.kill", s->cgroup);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (write(fd, "1", 1) < 0) logmsg("cgroup.kill: %s", strerror(errno));
        close(fd);
    }
    if (!s->exited) { /* and the child itself, in case it has not joined the cgroup yet */
        kill(-s->pid, SIGKILL);
        kill(s->pid, SIGKILL);
    }
}

static void free_session(struct session *s) {
    close_fd(&s->out);
    close_fd(&s->err);
    close_fd(&s->in);
    free(s->inbuf);
    rmdir(s->cgroup); /* fails while a daemon it started lives on; swept later */
    memset(s, 0, sizeof *s);
    s->out = s->err = s->in = -1;
}

/* The host of port `pi` is gone (or started over): its commands die with it. */
static void drop_port_sessions(int pi) {
    for (int i = 0; i < MAX_SESSIONS; i++) {
        struct session *s = &sessions[i];
        if (!s->used || s->port != pi) continue;
        kill_tree(s);
        close_fd(&s->out);
        close_fd(&s->err);
        close_fd(&s->in);
        s->port = -1;
        if (s->exited) free_session(s);
    }
}

/* ---- the child: from root to the caller's command ---------------------------------- */

static void child_fail(int code, const char *what, const char *arg) {
    char msg[512];
    int n = snprintf(msg, sizeof msg, "sbx-service: %s%s%s: %s\n", what, arg ? " " : "",
                     arg ? arg : "", strerror(errno));
    if (n > 0 && write(2, msg, (size_t)n) < 0) _exit(code);
    _exit(code);
}

struct start {
    uint32_t uid, gid, ngroups;
    gid_t groups[MAX_GROUPS];
    uint16_t rows, cols;
    int tty;
    const char *workdir;
    char **argv, **envp;
};

static void drop_privileges(const struct start *st) {
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    if (have_bounding)
        for (int cap = 0; cap < 64; cap++)
            if (!(bounding & (1ULL << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 &&
                errno != EINVAL)
                child_fail(126, "dropping the bounding set", NULL);
    if (ambient && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0) child_fail(126, "keepcaps", NULL);
    if (setgroups(st->ngroups, st->groups) < 0) child_fail(126, "setgroups", NULL);
    if (setresgid(st->gid, st->gid, st->gid) < 0) child_fail(126, "setresgid", NULL);
    if (setresuid(st->uid, st->uid, st->uid) < 0) child_fail(126, "setresuid", NULL);
    if (syscall(SYS_capget, &head, data) < 0) child_fail(126, "capget", NULL);
    uint64_t keep = have_bounding ? bounding : ~0ULL;
    for (int i = 0; i < 2; i++) {
        uint32_t mask = (uint32_t)(keep >> (32 * i));
        uint32_t amb = (uint32_t)(ambient >> (32 * i));
        data[i].permitted &= mask;
        data[i].effective &= mask;
        data[i].inheritable = (data[i].inheritable & mask) | (amb & data[i].permitted);
    }
    if (syscall(SYS_capset, &head, data) < 0) child_fail(126, "capset", NULL);
    for (int cap = 0; cap < 64; cap++)
        if ((ambient & (1ULL << cap)) &&
            prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0)
            child_fail(126, "raising an ambient capability", cap_names[cap < 41 ? cap : 0]);
    if (ambient) prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
    if (nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) child_fail(126, "no_new_privs", NULL);
}

/* execvp's search, in the caller's PATH (not ours), as coreutils' env does. */
static void exec_command(char **argv, char **envp) {
    const char *file = argv[0];
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        child_fail(errno == ENOENT ? 127 : 126, "cannot run", file);
    }
    const char *path = "/usr/local/bin:/usr/bin:/bin";
    for (char **e = envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0) path = *e + 5;
    int denied = 0;
    size_t flen = strlen(file);
    for (const char *dir = path;; dir++) {
        const char *end = strchrnul(dir, ':');
        size_t dlen = (size_t)(end - dir);
        char full[4096];
        if (dlen + flen + 2 <= sizeof full) {
            if (dlen) memcpy(full, dir, dlen);
            else full[0] = '.', dlen = 1;
            full[dlen] = '/';
            memcpy(full + dlen + 1, file, flen + 1);
            execve(full, argv, envp);
            if (errno == EACCES) denied = 1;
            else if (errno != ENOENT && errno != ENOTDIR && errno != ELOOP &&
                     errno != ENAMETOOLONG)
                child_fail(126, "cannot run", file);
        }
        if (!*end) break;
        dir = end;
    }
    errno = denied ? EACCES : ENOENT;
    child_fail(denied ? 126 : 127, "cannot run", file);
}

static void child(const struct start *st, const char *cgroup, int fds[3], const char *tty) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* Every signal to its default (SIGPIPE is ignored here): execve keeps what is
     * ignored, and Ctrl-C must work. */
    for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
    setsid();
    if (tty) {
        int slave = open(tty, O_RDWR | O_CLOEXEC);
        if (slave < 0 || ioctl(slave, TIOCSCTTY, 0) < 0) _exit(125);
        if (fchown(slave, st->uid, st->gid) < 0 || fchmod(slave, 0620) < 0) _exit(125);
        fds[0] = fds[1] = fds[2] = slave;
    }
    for (int i = 0; i < 3; i++)
        if (dup2(fds[i], i) < 0) _exit(125);
    /* Into the command's own cgroup before anything else: the limits hold from here on. */
    char path[128];
    snprintf(path, sizeof path, "%s/cgroup.procs", cgroup);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "0", 1) != 1) child_fail(125, "joining the cgroup", cgroup);
    close(fd);
    drop_privileges(st);
    /* Only now, as the user, anything the caller chose. */
    if (chdir(st->workdir) < 0) child_fail(125, "cannot change directory to", st->workdir);
    exec_command(st->argv, st->envp);
}

/* ---- the START frame ---------------------------------------------------------------- */

/* A NUL-terminated string at *pos within len; NULL if none. */
static char *take_string(unsigned char *payload, size_t len, size_t *pos) {
    if (*pos >= len) return NULL;
    unsigned char *nul = memchr(payload + *pos, 0, len - *pos);
    if (!nul) return NULL;
    char *s = (char *)payload + *pos;
    *pos = (size_t)(nul - payload) + 1;
    return s;
}

static char **take_list(unsigned char *payload, size_t len, size_t *pos, int need_one) {
    if (*pos + 4 > len) return NULL;
    uint32_t n = get32(payload + *pos);
    *pos += 4;
    if (n > MAX_ARGS || n > len || (need_one && n == 0)) return NULL;
    char **list = calloc(n + 1, sizeof *list);
    if (!list) return NULL;
    for (uint32_t i = 0; i < n; i++)
        if (!(list[i] = take_string(payload, len, pos))) {
            free(list);
            return NULL;
        }
    return list;
}

/* uid, gid, rows, cols, tty, ngroups, groups..., workdir\0, argc, argv\0..., envc, env\0... */
static int parse_start(unsigned char *payload, size_t len, struct start *st) {
    if (len < 17) return -1;
    st->uid = get32(payload);
    st->gid = get32(payload + 4);
    st->rows = (uint16_t)(payload[8] << 8 | payload[9]);
    st->cols = (uint16_t)(payload[10] << 8 | payload[11]);
    st->tty = payload[12];
    st->ngroups = get32(payload + 13);
    /* (uid_t)-1 means "keep" to setresuid: it would keep root. */
    if (st->uid == UINT32_MAX || st->gid == UINT32_MAX || st->ngroups > MAX_GROUPS ||
        st->tty > 1)
        return -1;
    size_t pos = 17;
    if (pos + 4 * (size_t)st->ngroups > len) return -1;
    for (uint32_t i = 0; i < st->ngroups; i++, pos += 4) {
        st->groups[i] = get32(payload + pos);
        if (st->groups[i] == UINT32_MAX) return -1;
    }
    st->workdir = take_string(payload, len, &pos);
    if (!st->workdir || !*st->workdir) return -1;
    st->argv = take_list(payload, len, &pos, 1);
    if (!st->argv) return -1;
    st->envp = take_list(payload, len, &pos, 0);
    if (!st->envp || pos != len) {
        free(st->argv);
        free(st->envp);
        return -1;
    }
    return 0;
}

/* cgroups of finished commands (a daemon may have kept one busy for a while). */
static void sweep_cgroups(void) {
    DIR *dir = opendir(cgroup_root);
    if (!dir) return;
    for (struct dirent *e; (e = readdir(dir));) {
        if (strncmp(e->d_name, "svc-", 4) != 0) continue;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", cgroup_root, e->d_name);
        int live = 0;
        for (int i = 0; i < MAX_SESSIONS; i++)
            if (sessions[i].used && strcmp(sessions[i].cgroup, path) == 0) live = 1;
        if (!live) rmdir(path);
    }
    closedir(dir);
}

static void start(int pi, uint32_t id, unsigned char *payload, size_t len) {
    struct start st;
    if (find(pi, id)) { send_error(pi, id, "session id in use"); return; }
    if (parse_start(payload, len, &st) < 0) { send_error(pi, id, "malformed start frame"); return; }
    struct session *s = NULL;
    for (int i = 0; i < MAX_SESSIONS && !s; i++)
        if (!sessions[i].used) s = &sessions[i];
    if (!s) { send_error(pi, id, "too many commands at once"); goto out; }
    sweep_cgroups();
    snprintf(s->cgroup, sizeof s->cgroup, "%s/svc-%llx-%lu", cgroup_root, boot_id, ++counter);
    if (mkdir(s->cgroup, 0755) < 0) {
        char msg[256];
        snprintf(msg, sizeof msg, "cannot create the command's cgroup: %s", strerror(errno));
        send_error(pi, id, msg);
        s->cgroup[0] = 0;
        goto out;
    }
    int fds[3] = {-1, -1, -1}, mine[3] = {-1, -1, -1};
    char ttyname[64];
    const char *tty = NULL;
    if (st.tty) {
        int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        struct winsize ws = {.ws_row = st.rows, .ws_col = st.cols};
        if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0 ||
            ptsname_r(master, ttyname, sizeof ttyname) != 0 || ioctl(master, TIOCSWINSZ, &ws) < 0) {
            if (master >= 0) close(master);
            send_error(pi, id, "cannot open a pseudo-terminal");
            rmdir(s->cgroup);
            goto out;
        }
        tty = ttyname;
        mine[0] = master;
        mine[1] = dup(master);
        fcntl(mine[1], F_SETFD, FD_CLOEXEC);
    } else {
        int p[3][2];
        int ok = 1;
        for (int i = 0; i < 3; i++)
            if (pipe2(p[i], O_CLOEXEC) < 0) ok = 0, p[i][0] = p[i][1] = -1;
        if (!ok) {
            for (int i = 0; i < 3; i++) { close_fd(&p[i][0]); close_fd(&p[i][1]); }
            send_error(pi, id, "cannot make pipes");
            rmdir(s->cgroup);
            goto out;
        }
        fds[0] = p[0][0], mine[0] = p[0][1]; /* stdin: the child reads, we write */
        fds[1] = p[1][1], mine[1] = p[1][0];
        fds[2] = p[2][1], mine[2] = p[2][0];
    }
    pid_t pid = fork();
    if (pid == 0) child(&st, s->cgroup, fds, tty);
    for (int i = 0; i < 3; i++) close_fd(&fds[i]);
    if (pid < 0) {
        for (int i = 0; i < 3; i++) close_fd(&mine[i]);
        send_error(pi, id, "fork failed");
        rmdir(s->cgroup);
        goto out;
    }
    s->used = 1, s->port = pi, s->id = id, s->pid = pid, s->tty = st.tty;
    s->in = mine[0];
    s->out = mine[1];
    s->err = mine[2];
    s->credit = WINDOW;
    s->inbuf = malloc(WINDOW);
    if (!s->inbuf) { logmsg("out of memory"); _exit(1); }
    for (int i = 0; i < 3; i++)
        if (mine[i] >= 0) set_nonblock(mine[i]);
    unsigned char reply[4];
    put32(reply, (uint32_t)pid);
    send_frame(pi, G_STARTED, id, reply, 4);
out:
    free(st.argv);
    free(st.envp);
}

/* ---- frames from the host ----------------------------------------------------------- */

static void dispatch(int pi, int type, uint32_t id, unsigned char *payload, size_t len) {
    struct session *s = type == T_HELLO || type == T_START ? NULL : find(pi, id);
    switch (type) {
    case T_HELLO: /* a new host connection: whatever the last one left is gone */
        drop_port_sessions(pi);
        ports[pi].txlen = 0;
        send_frame(pi, T_HELLO, 0, payload, len);
        return;
    case T_START:
        start(pi, id, payload, len);
        return;
    case T_STDIN:
        if (!s) return; /* it ended meanwhile */
        if (s->in < 0 || s->in_closing) { /* nobody reads: the bytes go, the credit comes back */
            s->in_done += len;
            return;
        }
        if (s->inlen + len > WINDOW) { /* beyond the credit we gave */
            send_error(pi, id, "stdin beyond its window");
            kill_tree(s);
            return;
        }
        memcpy(s->inbuf + s->inlen, payload, len);
        s->inlen += len;
        return;
    case T_STDIN_CLOSE:
        if (s) s->in_closing = 1;
        return;
    case T_SIGNAL:
        if (!s || s->exited || len != 4) return;
        if (get32(payload) == SIGKILL) kill_tree(s);
        else if (get32(payload) >= 1 && get32(payload) < 65 &&
                 kill(-s->pid, (int)get32(payload)) < 0 && errno == ESRCH)
            kill(s->pid, (int)get32(payload)); /* before its setsid(): no group yet */
        return;
    case T_RESIZE:
        if (s && s->tty && s->out >= 0 && len == 4) {
            struct winsize ws = {.ws_row = (unsigned short)(payload[0] << 8 | payload[1]),
                                 .ws_col = (unsigned short)(payload[2] << 8 | payload[3])};
            ioctl(s->out, TIOCSWINSZ, &ws);
        }
        return;
    case T_CREDIT:
        if (s && len == 4 && s->credit + (long)get32(payload) <= CREDIT_MAX) s->credit += get32(payload);
        return;
    }
}

static size_t frame_max(int type) {
    switch (type) {
    case T_HELLO: return HELLO_SIZE;
    case T_START: return START_MAX;
    case T_STDIN: return DATA_MAX;
    case T_STDIN_CLOSE: return 0;
    case T_SIGNAL: case T_RESIZE: case T_CREDIT: return 4;
    default: return (size_t)-1; /* unknown */
    }
}

static const unsigned char hello_header[HEADER] = {'S', 'B', T_HELLO, 0, 0, 0, 0, 0, 0, 0, 0, HELLO_SIZE};

static void parse_rx(int pi) {
    struct port *p = &ports[pi];
    size_t at = 0;
    while (p->rxlen - at >= HEADER) {
        unsigned char *h = p->rx + at;
        if (p->desync) {
            unsigned char *m = memmem(h, p->rxlen - at, hello_header, HEADER);
            if (!m) { at = p->rxlen - (HEADER - 1); break; }
            at = (size_t)(m - p->rx);
            p->desync = 0;
            continue;
        }
        int type = h[2];
        uint32_t len = get32(h + 8);
        size_t max = frame_max(type);
        if (h[0] != 'S' || h[1] != 'B' || h[3] != 0 || max == (size_t)-1 || len > max ||
            (type == T_HELLO && len != HELLO_SIZE)) {
            logmsg("%s: malformed frame from the host; waiting for a new connection", p->path);
            drop_port_sessions(pi);
            p->desync = 1;
            at++;
            continue;
        }
        if (p->rxlen - at < HEADER + (size_t)len) break;
        dispatch(pi, type, get32(h + 4), h + HEADER, len);
        at += HEADER + len;
    }
    memmove(p->rx, p->rx + at, p->rxlen - at);
    p->rxlen -= at;
}

/* The host went away: its commands die, a frame it left half-sent goes. What we queued
 * stays: the driver may hand us a new host's HELLO before it tells us that host connected
 * (data and control travel apart), and the reply is then already queued here. */
static void port_hup(int pi) {
    struct port *p = &ports[pi];
    drop_port_sessions(pi);
    p->hup = 1, p->desync = 0, p->rxlen = 0;
}

static void read_port(int pi) {
    struct port *p = &ports[pi];
    while (p->rxlen < RX_MAX) {
        ssize_t n = read(p->fd, p->rx + p->rxlen, RX_MAX - p->rxlen);
        if (n > 0) {
            p->rxlen += (size_t)n;
            parse_rx(pi);
            continue;
        }
        if (n == 0) port_hup(pi); /* virtio: no host connected */
        return; /* EAGAIN, or an error the next poll shows */
    }
}

static void write_port(int pi) {
    struct port *p = &ports[pi];
    while (p->txlen) {
        ssize_t n = write(p->fd, p->tx, p->txlen);
        if (n <= 0) return;
        memmove(p->tx, p->tx + n, p->txlen - (size_t)n);
        p->txlen -= (size_t)n;
    }
}

/* ---- commands' streams -------------------------------------------------------------- */

/* Read what the command wrote; EOF (or, once it exited, nothing left) closes the stream. */
static void pump_output(struct session *s, int *fd, int type) {
    while (*fd >= 0 && s->credit > 0 && (s->port < 0 || ports[s->port].txlen < TX_HIGH)) {
        unsigned char buf[DATA_MAX];
        size_t want = s->credit < DATA_MAX ? (size_t)s->credit : DATA_MAX;
        ssize_t n = read(*fd, buf, want);
        if (n > 0) {
            send_frame(s->port, type, s->id, buf, (size_t)n);
            s->credit -= n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN && !s->exited) return;
        close_fd(fd); /* EOF, EIO (terminal hung up), or drained after the exit */
        if (s->tty) close_fd(&s->in);
    }
}

static void pump_input(struct session *s) {
    if (s->in >= 0 && s->inlen) {
        ssize_t n = write(s->in, s->inbuf, s->inlen);
        if (n > 0) {
            memmove(s->inbuf, s->inbuf + n, s->inlen - (size_t)n);
            s->inlen -= (size_t)n;
            s->in_done += (size_t)n;
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
            s->in_done += s->inlen; /* the command stopped reading: drop it, give credit */
            s->inlen = 0;
            if (!s->tty) close_fd(&s->in);
        }
    }
    if (s->in_done && (s->inlen == 0 || s->in_done >= WINDOW / 4)) {
        unsigned char credit[4];
        put32(credit, (uint32_t)s->in_done);
        send_frame(s->port, G_CREDIT, s->id, credit, 4);
        s->in_done = 0;
    }
    if (s->in_closing && s->inlen == 0 && !s->tty) close_fd(&s->in);
}

static void finish(struct session *s) {
    if (s->out >= 0 || s->err >= 0) return;
    unsigned char status[8];
    int code = WIFEXITED(s->status) ? WEXITSTATUS(s->status) : -1;
    int sig = WIFSIGNALED(s->status) ? WTERMSIG(s->status) : 0;
    put32(status, (uint32_t)code);
    put32(status + 4, (uint32_t)sig);
    send_frame(s->port, G_EXIT, s->id, status, 8);
    free_session(s);
}

static void reap(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid == agent) {
            logmsg("the guest agent ended (%d); ending too", status);
            exit(1);
        }
        for (int i = 0; i < MAX_SESSIONS; i++) {
            struct session *s = &sessions[i];
            if (!s->used || s->pid != pid || s->exited) continue;
            s->exited = 1, s->status = status;
            if (s->port < 0) free_session(s);
        }
    }
}

int main(int argc, char **argv) {
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--nnp") == 0) nnp = 1;
        else if (strcmp(argv[i], "--bounding") == 0 && i + 1 < argc) {
            have_bounding = 1;
            if (parse_caps(argv[++i], &bounding) < 0) { logmsg("bad --bounding"); return 2; }
        } else if (strcmp(argv[i], "--ambient") == 0 && i + 1 < argc) {
            if (parse_caps(argv[++i], &ambient) < 0) { logmsg("bad --ambient"); return 2; }
        } else { logmsg("unknown option %s", argv[i]); return 2; }
    }
    if (have_bounding) ambient &= bounding;
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (nports == MAX_PORTS) continue;
        struct port *p = &ports[nports];
        p->path = argv[i];
        p->fd = open(argv[i], O_RDWR | O_NONBLOCK | O_CLOEXEC);
        if (p->fd < 0) { logmsg("%s: %s", argv[i], strerror(errno)); continue; }
        /* SIGIO when the host connects: no polling of a port nobody holds. */
        fcntl(p->fd, F_SETOWN, getpid());
        fcntl(p->fd, F_SETFL, O_RDWR | O_NONBLOCK | O_ASYNC);
        p->rx = malloc(RX_MAX);
        if (!p->rx) return 1;
        nports++;
    }
    if (!nports) logmsg("no ports: serving nothing");
    for (int k = 0; k < MAX_SESSIONS; k++) sessions[k].out = sessions[k].err = sessions[k].in = -1;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    boot_id = (unsigned long long)now.tv_sec * 1000000000ULL + (unsigned long long)now.tv_nsec;
    /* No signal left ignored by whoever started us (a shell's `&` ignores SIGINT and
     * SIGQUIT): a child signalled before its own reset must still get the default. */
    for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
    signal(SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGIO);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) { logmsg("signalfd: %s", strerror(errno)); return 1; }
    if (i < argc && i + 1 < argc) {
        agent = fork();
        if (agent == 0) {
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, NULL);
            signal(SIGPIPE, SIG_DFL);
            execv(argv[i + 1], argv + i + 1);
            logmsg("%s: %s", argv[i + 1], strerror(errno));
            _exit(127);
        }
        if (agent < 0) { logmsg("fork: %s", strerror(errno)); return 1; }
    }

    struct pollfd fds[1 + MAX_PORTS + 3 * MAX_SESSIONS];
    for (;;) {
        int n = 0, away = 0;
        fds[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
        int port_at[MAX_PORTS];
        for (int k = 0; k < nports; k++) {
            port_at[k] = -1;
            if (ports[k].hup) { away = 1; continue; }
            port_at[k] = n;
            fds[n++] = (struct pollfd){.fd = ports[k].fd,
                                       .events = POLLIN | (ports[k].txlen ? POLLOUT : 0)};
        }
        for (int k = 0; k < MAX_SESSIONS; k++) {
            struct session *s = &sessions[k];
            if (!s->used || s->port < 0) continue;
            int room = s->credit > 0 && ports[s->port].txlen < TX_HIGH;
            if (s->out >= 0 && room) fds[n++] = (struct pollfd){.fd = s->out, .events = POLLIN};
            if (s->err >= 0 && room) fds[n++] = (struct pollfd){.fd = s->err, .events = POLLIN};
            if (s->in >= 0 && s->inlen)
                fds[n++] = (struct pollfd){.fd = s->in, .events = POLLOUT};
        }
        if (poll(fds, (nfds_t)n, away ? 500 : -1) < 0 && errno != EINTR) {
            logmsg("poll: %s", strerror(errno));
            return 1;
        }
        struct signalfd_siginfo info;
        while (read(sfd, &info, sizeof info) == sizeof info)
            if (info.ssi_signo == SIGIO) away = 0;
        /* A host may have connected: look at every away port again. */
        for (int k = 0; k < nports; k++) {
            if (ports[k].hup) { ports[k].hup = 0; read_port(k); continue; }
            short ev = port_at[k] >= 0 ? fds[port_at[k]].revents : 0;
            if (ev & POLLIN) read_port(k);
            else if (ev & (POLLHUP | POLLERR)) read_port(k); /* reads 0: marks it away */
        }
        reap();
        for (int k = 0; k < MAX_SESSIONS; k++) {
            struct session *s = &sessions[k];
            if (!s->used || s->port < 0) continue;
            pump_input(s);
            pump_output(s, &s->out, G_STDOUT);
            pump_output(s, &s->err, G_STDERR);
            if (s->exited) finish(s);
        }
        for (int k = 0; k < nports; k++)
            if (!ports[k].hup && ports[k].txlen) write_port(k);
    }
}
