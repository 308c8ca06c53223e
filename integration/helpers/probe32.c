/* sandboxer 32-bit probe: the i386 ABI's socketcall takes socket()'s family in memory,
 * out of a filter's reach; libseccomp lets socketcall(SYS_SOCKET) through for any family
 * once `socket` is allowed for some. Prints NAME=RESULT (a descriptor, or -errno).
 *
 * No libc (the host may have no 32-bit one): gcc -m32 -static -nostdlib -ffreestanding.
 */
static long sys3(long number, long a, long b, long c) {
    long result;
    __asm__ volatile("int $0x80" : "=a"(result) : "a"(number), "b"(a), "c"(b), "d"(c)
                     : "memory");
    return result;
}

#define SYS_exit 1
#define SYS_write 4
#define SYS_socketcall 102
#define SYS_socket 359
#define SOCKETCALL_SOCKET 1

static void report(const char *name, long result) {
    char line[80], digits[12];
    int length = 0, count = 0;
    while (*name)
        line[length++] = *name++;
    line[length++] = '=';
    if (result < 0) {
        line[length++] = '-';
        result = -result;
    }
    do {
        digits[count++] = (char)('0' + result % 10);
        result /= 10;
    } while (result);
    while (count)
        line[length++] = digits[--count];
    line[length++] = '\n';
    sys3(SYS_write, 1, (long)line, length);
}

void _start(void) {
    long vsock[3] = {40, 1 /* SOCK_STREAM */, 0};
    long alg[3] = {38, 5 /* SOCK_SEQPACKET */, 0};
    report("socketcall(SOCKET,AF_VSOCK)", sys3(SYS_socketcall, SOCKETCALL_SOCKET, (long)vsock, 0));
    report("socketcall(SOCKET,AF_ALG)", sys3(SYS_socketcall, SOCKETCALL_SOCKET, (long)alg, 0));
    report("socket(AF_VSOCK)", sys3(SYS_socket, 40, 1, 0));
    sys3(SYS_exit, 0, 0, 0);
}
