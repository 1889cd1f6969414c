# Probe of a build environment, run by a static busybox as `busybox sh -c "$(cat this)" probe BUSYBOX`.
# Prints one section per fact ("== NAME" then the output), then writes $out. Reusable as the
# builder of a Guix derivation to compare with the C++ daemon (sections are stable).
bb=$1
echo "== env"; "$bb" env | "$bb" sort
echo "== id"; "$bb" id
echo "== ids"; "$bb" id -u; "$bb" id -g; "$bb" id -G
echo "== hostname"; "$bb" hostname
echo "== domainname"; "$bb" cat /proc/sys/kernel/domainname
echo "== pid"; echo $$
echo "== cwd"; "$bb" pwd
echo "== umask"; umask
echo "== ls /"; "$bb" ls -la /
echo "== ls /dev"; "$bb" ls -la /dev
echo "== ls /etc"; "$bb" ls -la /etc
echo "== passwd"; "$bb" cat /etc/passwd
echo "== group"; "$bb" cat /etc/group
echo "== hosts"; "$bb" cat /etc/hosts
echo "== ls /tmp"; "$bb" ls -la /tmp
echo "== ls store"; "$bb" ls -la "$NIX_STORE"
echo "== mountinfo"; "$bb" cat /proc/self/mountinfo
echo "== ip"; "$bb" ip addr
echo "== netdev"; "$bb" cat /proc/net/dev
echo "== status"; "$bb" grep -E '^(Uid|Gid|Groups|Cap[A-Za-z]+|NoNewPrivs|Seccomp):' /proc/self/status
echo "== personality"; "$bb" cat /proc/self/personality
echo "== fds"; "$bb" ls /proc/self/fd
echo "== fd targets"; for f in 0 1 2; do "$bb" readlink /proc/self/fd/$f; done
echo "== argv0"; "$bb" cat /proc/1/cmdline | "$bb" tr '\0' ' '; echo
echo "== end"
if [ -n "$PROBE_WAIT" ]; then
  while [ ! -e go ]; do "$bb" sleep 0.05; done
fi
"$bb" mkdir -p "$out"
echo probe > "$out/file"
