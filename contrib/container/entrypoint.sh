#!/bin/sh
# sstatefs-entrypoint: container entrypoint that mounts the shared sstate store
# at $SSTATE_DIR with `sstatefs run`, runs the container's command with
# SSTATE_DIR exported (as the build user if one is set), then uploads what the
# command published, unmounts and exits with the command's status.
#
#   docker run --device /dev/fuse --cap-add SYS_ADMIN \
#       -e SSTATEFS_STORE=s3://my-sstate/poky -e SSTATEFS_BUILD_USER=builder \
#       -v sstatefs-cache:/var/cache/sstatefs IMAGE \
#       sh -c '. poky/oe-init-build-env build && bitbake core-image-minimal'
#
# Assumes:
#   - POSIX sh (dash, bash, busybox ash), sstatefs on PATH (a version with
#     `sstatefs run`, --mountpoint and --mount-owner), getent, and setpriv
#     (util-linux) when SSTATEFS_BUILD_USER is set;
#   - it starts as root, so that it can mount (root needs no fusermount3 and no
#     user_allow_other) and then drop to the build user: bitbake refuses to run
#     as root. Started as another user it mounts through fusermount3 (fuse3,
#     setuid root), which needs /dev/fuse usable by that user;
#   - the container has /dev/fuse and CAP_SYS_ADMIN (--device /dev/fuse
#     --cap-add SYS_ADMIN); under Docker's default AppArmor profile also
#     --security-opt apparmor=unconfined, which otherwise denies mount(2);
#   - an init as PID 1 that reaps orphans (the image runs tini; or docker run
#     --init): bitbake leaves orphaned processes behind.
#
# Environment:
#   SSTATE_DIR           where to mount; exported to the command
#                        (default /var/cache/sstate)
#   SSTATEFS_STORE       store URL (--store), e.g. s3://bucket/prefix; default:
#                        the configuration file's store
#   SSTATEFS_CONFIG      configuration file, read by sstatefs itself (default
#                        /etc/sstatefs/sstatefs.toml if it exists)
#   SSTATEFS_CACHE_DIR   --cache-dir: the disk cache, the local overlay and the
#                        durable upload queue; keep it on a volume so that what
#                        was not uploaded at exit is uploaded by the next run.
#                        Empty: the configuration file's cache.dir
#   SSTATEFS_BUILD_USER  run the command as this user (name or uid; a bare
#                        uid[:gid] need not exist in /etc/passwd). Implies
#                        --allow-other and --mount-owner UID:GID
#   SSTATEFS_MOUNT_OWNER uid:gid shown as owner of the store's objects
#                        (default: the build user's; without one, the
#                        mountpoint's owner)
#   SSTATEFS_ALLOW_OTHER 1: --allow-other even without a build user; 0: never
#   SSTATEFS_ARGS        more flags for `sstatefs run`, split on blanks, e.g.
#                        "--publish-drain-timeout=60s --metrics-addr=:9477"
#   SSTATEFS_FUSE_DEVICE the FUSE device checked before mounting (default
#                        /dev/fuse; tests point it elsewhere)
#
# Exit status: the command's (127 when it does not exist, 128+N when signal N
# ended it); 2 for usage errors and an invalid configuration; 1 when the mount
# cannot be made.
# SIGINT and SIGTERM reach the command (this script execs `sstatefs run`,
# which passes them on); sstatefs then still uploads, unmounts and exits.
set -eu

prog=sstatefs-entrypoint

die() {
    code=$1
    shift
    printf '%s: %s\n' "$prog" "$*" >&2
    exit "$code"
}

warn() {
    printf '%s: warning: %s\n' "$prog" "$*" >&2
}

if [ $# -eq 0 ]; then
    die 2 "no command given: pass the build command as the container's arguments, e.g.
    docker run ... IMAGE sh -c '. poky/oe-init-build-env build && bitbake core-image-minimal'
  (SSTATE_DIR is exported to it; see the header of this script for the SSTATEFS_* settings)"
fi

SSTATE_DIR=${SSTATE_DIR:-/var/cache/sstate}
fuse_dev=${SSTATEFS_FUSE_DEVICE:-/dev/fuse}
uid=$(id -u)

# --- FUSE: fail early, with the fix, instead of a mount error further down.
container_fix="start the container with --device /dev/fuse --cap-add SYS_ADMIN (Docker with AppArmor: also --security-opt apparmor=unconfined; Kubernetes: see contrib/kubernetes/sidecar-pod.yaml)"
if [ ! -e "$fuse_dev" ]; then
    die 1 "$fuse_dev does not exist, so this container cannot mount FUSE file systems: $container_fix"
fi
if [ ! -c "$fuse_dev" ]; then
    die 1 "$fuse_dev is not a character device: $container_fix"
fi
# (in a subshell: a failed redirection of a special builtin ends the shell)
if ! (: <>"$fuse_dev") 2>/dev/null; then
    if [ "$uid" -eq 0 ]; then
        die 1 "cannot open $fuse_dev as root (a device cgroup denies it?): $container_fix"
    fi
    die 1 "cannot open $fuse_dev as uid $uid: start the container as root (and set SSTATEFS_BUILD_USER for the build), or make $fuse_dev accessible to uid $uid"
fi
if [ "$uid" -eq 0 ]; then
    # Root mounts directly; without CAP_SYS_ADMIN in the bounding set no
    # process here (fusermount3 included) can ever mount.
    capbnd=$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status 2>/dev/null || true)
    case $capbnd in
    *[!0-9a-fA-F]* | '') ;;
    *)
        if [ $(((0x$capbnd >> 21) & 1)) -eq 0 ]; then
            die 1 "CAP_SYS_ADMIN is not available in this container, so it cannot mount: $container_fix"
        fi
        ;;
    esac
    case $(cat /proc/self/attr/current 2>/dev/null || true) in
    docker-default*enforce*)
        warn "Docker's default AppArmor profile denies mount(2); if mounting fails with 'permission denied', add --security-opt apparmor=unconfined"
        ;;
    esac
fi

# --- the build user: the command runs as this user, on a root mount.
allow_other=${SSTATEFS_ALLOW_OTHER:-}
mount_owner=${SSTATEFS_MOUNT_OWNER:-}
if [ -n "${SSTATEFS_BUILD_USER:-}" ]; then
    if [ "$uid" -ne 0 ]; then
        die 1 "SSTATEFS_BUILD_USER=$SSTATEFS_BUILD_USER needs the container to start as root (it runs as uid $uid); drop SSTATEFS_BUILD_USER to build as uid $uid"
    fi
    command -v setpriv >/dev/null 2>&1 ||
        die 1 "SSTATEFS_BUILD_USER is set but setpriv (util-linux) is not installed"
    build_user=${SSTATEFS_BUILD_USER%%:*}
    if entry=$(getent passwd "$build_user"); then
        # name:x:uid:gid:gecos:home:shell
        b_uid=$(printf '%s\n' "$entry" | cut -d: -f3)
        b_gid=$(printf '%s\n' "$entry" | cut -d: -f4)
        b_name=$(printf '%s\n' "$entry" | cut -d: -f1)
        b_home=$(printf '%s\n' "$entry" | cut -d: -f6)
        groups=--init-groups
    else
        case $build_user in
        '' | *[!0-9]*) die 1 "SSTATEFS_BUILD_USER: no such user: $build_user (give a user of /etc/passwd, or uid[:gid])" ;;
        esac
        b_uid=$build_user b_gid=$build_user b_name='' b_home=''
        groups=--clear-groups
    fi
    case $SSTATEFS_BUILD_USER in
    *:*) b_gid=${SSTATEFS_BUILD_USER#*:} ;;
    esac
    case $b_gid in
    '' | *[!0-9]*) die 1 "SSTATEFS_BUILD_USER: group must be a number: $SSTATEFS_BUILD_USER" ;;
    esac
    [ -n "$allow_other" ] || allow_other=1
    [ -n "$mount_owner" ] || mount_owner=$b_uid:$b_gid

    # bitbake and the tools it runs want HOME, USER and LOGNAME of the user.
    if [ -n "$b_name" ]; then
        set -- env HOME="$b_home" USER="$b_name" LOGNAME="$b_name" "$@"
    fi
    set -- setpriv --reuid="$b_uid" --regid="$b_gid" "$groups" -- "$@"
fi

# --- sstatefs run [flags] --mountpoint DIR -- COMMAND...
set -- --mountpoint "$SSTATE_DIR" -- "$@"
if [ "$allow_other" = 1 ]; then
    set -- --allow-other "$@"
fi
if [ -n "$mount_owner" ]; then
    set -- --mount-owner "$mount_owner" "$@"
fi
if [ -n "${SSTATEFS_CACHE_DIR:-}" ]; then
    set -- --cache-dir "$SSTATEFS_CACHE_DIR" "$@"
fi
if [ -n "${SSTATEFS_STORE:-}" ]; then
    set -- --store "$SSTATEFS_STORE" "$@"
fi
if [ -n "${SSTATEFS_ARGS:-}" ]; then
    set -f
    # shellcheck disable=SC2086 # split on blanks on purpose
    set -- $SSTATEFS_ARGS "$@"
    set +f
fi

command -v sstatefs >/dev/null 2>&1 || die 1 "sstatefs is not on PATH ($PATH)"
exec sstatefs run "$@"
