# The build sandbox as its builder sees it, written to stdout (the build log) in sections.
# Run by busybox `sh -c` with B=<busybox>; see compat_build_isolation.rs for what is normalised.
# The shell's open fds, listed from a subshell (busybox runs `$B ls` inside the shell that
# calls it, and an in-process redirection would show up), before the shell opens anything.
echo "== fds"
( $B ls -l /proc/$$/fd > fds.txt )
$B awk 'NR > 1 { print $1, $9, $10, $11 }' fds.txt
exec 2>&1
echo "== id"; $B id
echo "== processes"; echo "shell: $$"; for p in /proc/[0-9]*; do echo "${p#/proc/}"; done
echo "== hostname"; $B hostname; $B cat /proc/sys/kernel/hostname /proc/sys/kernel/domainname
echo "== cwd and umask"; $B pwd; umask
echo "== env"; $B env | $B sort
echo "== status"
$B grep -E '^(Uid|Gid|Groups|NoNewPrivs|Seccomp|Seccomp_filters|Cap[A-Za-z]+|NSpid|NSpgid|NSsid):' /proc/$$/status
echo "== personality"; $B cat /proc/$$/personality
echo "== limits"; $B cat /proc/$$/limits
echo "== uid_map"; $B cat /proc/$$/uid_map /proc/$$/gid_map /proc/$$/setgroups
echo "== mountinfo"; $B cat /proc/self/mountinfo
echo "== files"
for f in / /* /dev/* /dev/pts/* /dev/shm /etc/* /gnu /gnu/store /gnu/store/* /tmp /tmp/* /tmp/*/*; do
  [ -e "$f" ] || [ -L "$f" ] && $B stat -c '%A %u %g %N' "$f"
done
echo "== etc"
for f in /etc/*; do echo "-- $f $($B md5sum < "$f")"; done
for f in /etc/passwd /etc/group /etc/hosts; do echo "-- $f"; $B cat "$f"; done
echo "== net"
echo "-- interfaces"; $B tail -n +3 /proc/net/dev | $B cut -d: -f1 | $B tr -d ' '
echo "-- if_inet6"; $B cat /proc/net/if_inet6
echo "-- route"; $B cat /proc/net/route
echo "-- fib_trie"; $B cat /proc/net/fib_trie
echo "-- route_localnet"; $B cat /proc/sys/net/ipv4/conf/lo/route_localnet
echo "-- /sys"; if [ -e /sys ]; then echo present; else echo absent; fi
echo "== writes"
attempt() { msg=$( (eval "$1") 2>&1 ); echo "$1: status $? $msg"; }
attempt 'echo x > /gnu/store/probe-write'
attempt '$B mkdir /gnu/store/probe-dir'
attempt 'echo x > $bbdir/probe-write'
attempt 'echo x > /tmp/probe-write'
attempt 'echo x > /etc/probe-write'
attempt 'echo x >> /etc/passwd'
attempt 'echo x > /probe-write'
attempt 'echo x > /dev/probe-write'
attempt 'echo x > /dev/null'
attempt 'echo x > /dev/shm/probe-write'
attempt 'echo x > $NIX_BUILD_TOP/probe-write'
attempt 'echo other > /proc/sys/kernel/hostname'
attempt '$B hostname other'
attempt '$B mount -t tmpfs none $NIX_BUILD_TOP'
attempt '$B chown 0 $NIX_BUILD_TOP/probe-write'
attempt '$B mknod $NIX_BUILD_TOP/probe-node c 1 3'
echo probe-ok > $out
