/*
 * fsdprobe: the syscalls a guest workload needs that busybox has no applet for (xattrs, POSIX
 * and BSD locks, renameat2 flags, O_TMPFILE, fallocate modes, SEEK_DATA/SEEK_HOLE,
 * copy_file_range, statx), so the guest tests can reach every FUSE opcode.
 *
 * Built static by build.sh into the test bed initramfs as /bin/fsdprobe. Every subcommand
 * prints one line of space-separated key=value pairs for the host to parse; a failing call
 * prints err=ENAME (and exits 1) instead of its result, so expected failures are data.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *what)
{
    const char *name = strerrorname_np(errno);
    printf("err=%s call=%s\n", name ? name : "unknown", what);
    return 1;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: fsdprobe CMD ARGS\n"
            "  setxattr PATH NAME VALUE [create|replace]   getxattr PATH NAME\n"
            "  setxattrhex PATH NAME HEXVALUE (a binary value, e.g. a POSIX ACL)\n"
            "  listxattr PATH   removexattr PATH NAME\n"
            "  getlk|setlk|setlkw PATH r|w|u START LEN\n"
            "  flock PATH sh|ex|un nb|wait\n"
            "  hold posix|flock PATH START LEN READYFILE RELEASEFILE\n"
            "  rename2 OLD NEW noreplace|exchange|whiteout\n"
            "  tmpfile DIR NAME CONTENT   fallocate PATH alloc|keep|punch OFFSET LEN\n"
            "  seek PATH data|hole OFFSET   copy SRC DST LEN   statx PATH\n");
    return 2;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int open_or_die(const char *path, int flags)
{
    int fd = open(path, flags, 0644);
    if (fd < 0) {
        fail("open");
        exit(1);
    }
    return fd;
}

static short lock_type(const char *s)
{
    return s[0] == 'r' ? F_RDLCK : s[0] == 'w' ? F_WRLCK : F_UNLCK;
}

static const char *lock_name(short type)
{
    return type == F_RDLCK ? "rdlck" : type == F_WRLCK ? "wrlck" : "unlck";
}

/* Print a value on one line: unprintable bytes and spaces become "?". */
static void print_value(const char *buf, ssize_t len)
{
    printf("value=");
    for (ssize_t i = 0; i < len; i++)
        putchar(buf[i] > ' ' && buf[i] < 127 ? buf[i] : '?');
}

static int cmd_xattr(int argc, char **argv)
{
    const char *cmd = argv[1];
    char buf[4096];
    if (!strcmp(cmd, "setxattr") && (argc == 5 || argc == 6)) {
        int flags = 0;
        if (argc == 6)
            flags = !strcmp(argv[5], "create") ? XATTR_CREATE : XATTR_REPLACE;
        if (setxattr(argv[2], argv[3], argv[4], strlen(argv[4]), flags) < 0)
            return fail("setxattr");
        printf("ok=1\n");
        return 0;
    }
    if (!strcmp(cmd, "setxattrhex") && argc == 5) {
        size_t len = strlen(argv[4]) / 2;
        if (len > sizeof buf)
            return usage();
        for (size_t i = 0; i < len; i++) {
            unsigned int byte;
            if (sscanf(argv[4] + 2 * i, "%2x", &byte) != 1)
                return usage();
            buf[i] = (char)byte;
        }
        if (setxattr(argv[2], argv[3], buf, len, 0) < 0)
            return fail("setxattr");
        printf("ok=1\n");
        return 0;
    }
    if (!strcmp(cmd, "getxattr") && argc == 4) {
        /* The size probe (size 0), then a too-small buffer (ERANGE), then the real read. */
        ssize_t size = getxattr(argv[2], argv[3], NULL, 0);
        if (size < 0)
            return fail("getxattr-probe");
        const char *small = "none";
        if (size > 0 && getxattr(argv[2], argv[3], buf, size - 1) < 0)
            small = strerrorname_np(errno);
        ssize_t len = getxattr(argv[2], argv[3], buf, sizeof buf);
        if (len < 0)
            return fail("getxattr");
        printf("size=%zd small=%s len=%zd ", size, small, len);
        print_value(buf, len);
        putchar('\n');
        return 0;
    }
    if (!strcmp(cmd, "listxattr") && argc == 3) {
        ssize_t size = listxattr(argv[2], NULL, 0);
        if (size < 0)
            return fail("listxattr-probe");
        ssize_t len = listxattr(argv[2], buf, sizeof buf);
        if (len < 0)
            return fail("listxattr");
        printf("size=%zd names=", size);
        for (ssize_t i = 0; i < len; i += strlen(buf + i) + 1)
            printf("%s%s", i ? "," : "", buf + i);
        putchar('\n');
        return 0;
    }
    if (!strcmp(cmd, "removexattr") && argc == 4) {
        if (removexattr(argv[2], argv[3]) < 0)
            return fail("removexattr");
        printf("ok=1\n");
        return 0;
    }
    return usage();
}

static int cmd_posix_lock(int argc, char **argv)
{
    if (argc != 6)
        return usage();
    const char *cmd = argv[1];
    short type = lock_type(argv[3]);
    int fd = open_or_die(argv[2], type == F_RDLCK ? O_RDONLY : O_RDWR);
    struct flock fl = {
        .l_type = type, .l_whence = SEEK_SET, .l_start = atoll(argv[4]), .l_len = atoll(argv[5])};
    if (!strcmp(cmd, "getlk")) {
        if (fcntl(fd, F_GETLK, &fl) < 0)
            return fail("F_GETLK");
        printf("type=%s", lock_name(fl.l_type));
        if (fl.l_type != F_UNLCK)
            printf(" pid=%d start=%lld len=%lld", fl.l_pid, (long long)fl.l_start,
                   (long long)fl.l_len);
        putchar('\n');
        return 0;
    }
    int wait = !strcmp(cmd, "setlkw");
    double start = now_ms();
    if (fcntl(fd, wait ? F_SETLKW : F_SETLK, &fl) < 0)
        return fail(wait ? "F_SETLKW" : "F_SETLK");
    printf("ok=1 waited_ms=%.0f\n", now_ms() - start);
    return 0;
}

static int cmd_flock(int argc, char **argv)
{
    if (argc != 4 && argc != 5)
        return usage();
    int op = !strcmp(argv[3], "ex") ? LOCK_EX : !strcmp(argv[3], "sh") ? LOCK_SH : LOCK_UN;
    if (argc == 5 && !strcmp(argv[4], "nb"))
        op |= LOCK_NB;
    int fd = open_or_die(argv[2], O_RDONLY);
    double start = now_ms();
    if (flock(fd, op) < 0)
        return fail("flock");
    printf("ok=1 waited_ms=%.0f\n", now_ms() - start);
    return 0;
}

/* Take a lock (waiting for it), say so by creating READYFILE, and keep it until RELEASEFILE
 * exists: the other half of a two-process conflict, driven from the shell. */
static int cmd_hold(int argc, char **argv)
{
    if (argc != 8)
        return usage();
    int posix = !strcmp(argv[2], "posix");
    int fd = open_or_die(argv[3], O_RDWR);
    if (posix) {
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET,
                           .l_start = atoll(argv[4]), .l_len = atoll(argv[5])};
        if (fcntl(fd, F_SETLKW, &fl) < 0)
            return fail("F_SETLKW");
    } else if (flock(fd, LOCK_EX) < 0) {
        return fail("flock");
    }
    close(open_or_die(argv[6], O_WRONLY | O_CREAT));
    double start = now_ms();
    while (access(argv[7], F_OK) < 0) {
        if (now_ms() - start > 60000) {
            printf("err=ETIMEDOUT call=hold\n");
            return 1;
        }
        usleep(10000);
    }
    printf("ok=1 held_ms=%.0f\n", now_ms() - start);
    return 0; /* exit releases the lock (FLUSH, RELEASE) */
}

static int cmd_rename2(int argc, char **argv)
{
    if (argc != 5)
        return usage();
    unsigned flags = !strcmp(argv[4], "exchange")   ? RENAME_EXCHANGE
                     : !strcmp(argv[4], "whiteout") ? RENAME_WHITEOUT
                                                    : RENAME_NOREPLACE;
    if (syscall(SYS_renameat2, AT_FDCWD, argv[2], AT_FDCWD, argv[3], flags) < 0)
        return fail("renameat2");
    printf("ok=1\n");
    return 0;
}

static int cmd_tmpfile(int argc, char **argv)
{
    if (argc != 5)
        return usage();
    int fd = open(argv[2], O_TMPFILE | O_RDWR, 0640);
    if (fd < 0)
        return fail("O_TMPFILE");
    size_t len = strlen(argv[4]);
    if (write(fd, argv[4], len) != (ssize_t)len)
        return fail("write");
    struct stat st;
    if (fstat(fd, &st) < 0)
        return fail("fstat");
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    if (linkat(AT_FDCWD, proc, AT_FDCWD, argv[3], AT_SYMLINK_FOLLOW) < 0)
        return fail("linkat");
    struct stat linked;
    if (fstat(fd, &linked) < 0)
        return fail("fstat");
    printf("ok=1 nlink_before=%lu nlink_after=%lu\n", (unsigned long)st.st_nlink,
           (unsigned long)linked.st_nlink);
    return 0;
}

static int cmd_fallocate(int argc, char **argv)
{
    if (argc != 6)
        return usage();
    int mode = !strcmp(argv[3], "punch") ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
               : !strcmp(argv[3], "keep") ? FALLOC_FL_KEEP_SIZE
                                          : 0;
    int fd = open_or_die(argv[2], O_RDWR | O_CREAT);
    if (fallocate(fd, mode, atoll(argv[4]), atoll(argv[5])) < 0)
        return fail("fallocate");
    struct stat st;
    if (fstat(fd, &st) < 0)
        return fail("fstat");
    printf("ok=1 size=%lld blocks=%lld\n", (long long)st.st_size, (long long)st.st_blocks);
    return 0;
}

static int cmd_seek(int argc, char **argv)
{
    if (argc != 5)
        return usage();
    int fd = open_or_die(argv[2], O_RDONLY);
    off_t pos = lseek(fd, atoll(argv[4]), !strcmp(argv[3], "hole") ? SEEK_HOLE : SEEK_DATA);
    if (pos < 0)
        return fail("lseek");
    printf("pos=%lld\n", (long long)pos);
    return 0;
}

static int cmd_copy(int argc, char **argv)
{
    if (argc != 5)
        return usage();
    int in = open_or_die(argv[2], O_RDONLY);
    int out = open_or_die(argv[3], O_WRONLY | O_CREAT | O_TRUNC);
    size_t left = atoll(argv[4]);
    long long total = 0;
    int calls = 0;
    while (left > 0) {
        ssize_t n = copy_file_range(in, NULL, out, NULL, left, 0);
        if (n < 0)
            return fail("copy_file_range");
        calls++;
        if (n == 0)
            break;
        total += n;
        left -= n;
    }
    printf("copied=%lld calls=%d\n", total, calls);
    return 0;
}

static int cmd_statx(int argc, char **argv)
{
    if (argc != 3)
        return usage();
    struct statx stx;
    if (statx(AT_FDCWD, argv[2], AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS | STATX_BTIME, &stx) < 0)
        return fail("statx");
    printf("mask=0x%x btime=%s size=%llu blocks=%llu mode=0%o nlink=%u ino=%llu mtime=%lld\n",
           stx.stx_mask, (stx.stx_mask & STATX_BTIME) ? "yes" : "no",
           (unsigned long long)stx.stx_size, (unsigned long long)stx.stx_blocks, stx.stx_mode,
           stx.stx_nlink, (unsigned long long)stx.stx_ino, (long long)stx.stx_mtime.tv_sec);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2)
        return usage();
    const char *cmd = argv[1];
    if (strstr(cmd, "xattr"))
        return cmd_xattr(argc, argv);
    if (!strcmp(cmd, "getlk") || !strcmp(cmd, "setlk") || !strcmp(cmd, "setlkw"))
        return cmd_posix_lock(argc, argv);
    if (!strcmp(cmd, "flock"))
        return cmd_flock(argc, argv);
    if (!strcmp(cmd, "hold"))
        return cmd_hold(argc, argv);
    if (!strcmp(cmd, "rename2"))
        return cmd_rename2(argc, argv);
    if (!strcmp(cmd, "tmpfile"))
        return cmd_tmpfile(argc, argv);
    if (!strcmp(cmd, "fallocate"))
        return cmd_fallocate(argc, argv);
    if (!strcmp(cmd, "seek"))
        return cmd_seek(argc, argv);
    if (!strcmp(cmd, "copy"))
        return cmd_copy(argc, argv);
    if (!strcmp(cmd, "statx"))
        return cmd_statx(argc, argv);
    return usage();
}
