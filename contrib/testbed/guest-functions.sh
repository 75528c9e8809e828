# Shell helpers for workloads; /init sources this file, and workloads run in a subshell of /init.

# fsd_mark WORD [ARGS...]: a marker line the host harness parses, always on the console.
fsd_mark() { echo "@@FSD $*" > /dev/console; }

# fsd_fail MESSAGE: report a failure before the workload could run, and stop the guest.
fsd_fail() {
    fsd_mark FAIL "$*"
    dmesg | tail -n 30 > /dev/console
    poweroff -f
}

fsd_uptime() { cut -d' ' -f1 /proc/uptime; }

# host_step NAME [ARGS...]: pause until the host has run its step NAME (for example changing
# the allowlist), then print the host's one-line reply. The request goes out on the console;
# the reply comes back on ttyS1, a channel that no shared-directory state can hide.
host_step() {
    fsd_mark STEP "$@"
    IFS= read -r fsd_reply <&3 || return 1
    case "$fsd_reply" in
        "!"*) echo "host step $1 failed: ${fsd_reply#!}" >&2; return 1 ;;
    esac
    printf '%s\n' "$fsd_reply"
}

# as_user CMD [ARGS...]: run a command as the unprivileged user (uid 1000, gid 1000, groups
# user and extra), for credential tests. Busybox here has no chpst/setuidgid; su does the job
# ("--" keeps su from taking the command's own options).
as_user() { su -s /bin/sh -c 'exec "$@"' -- user as_user "$@"; }

# load_module NAME: insmod a module the test bed ships but /init does not load (overlay).
load_module() {
    grep -q "^$1 " /proc/modules || insmod "/lib/modules/$1.ko"
}
