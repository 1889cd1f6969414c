#!/bin/sh
# The main job, run inside the rig's chroot by scripts/demo: the unmodified guix 1.5.0 client
# against our daemon on a fresh store. Prints each step and its answer.
set -e
say() { printf '\n== %s\n' "$*"; }

say "guix repl: add-text-to-store, add-to-store, query-path-info, valid-path?"
guix repl /demo/store-ops.scm

t=$(guix repl /demo/store-ops.scm | sed -n 's/^text: //p')
say "guix gc --references / --referrers / --requisites of $t"
guix gc --references "$t"
guix gc --referrers "$(guix gc --references "$t" | head -n1)"
guix gc --requisites "$t"

say "guix size $t"
guix size "$t"

say "guix archive --export | sha256, then --import into the same store"
guix archive --export "$t" > /tmp/demo.nar
echo "export: $(wc -c < /tmp/demo.nar) bytes, sha256 $(sha256sum /tmp/demo.nar | cut -d' ' -f1)"
guix archive --import < /tmp/demo.nar && echo "import: ok"

say "guix gc --verify=contents"
guix gc --verify=contents

drv=$(guix repl /demo/chain.scm)
say "guix build $drv (a chain of three derivations, built in chroots as build users)"
out=$(guix build "$drv")
echo "output: $out"
cat "$out"

say "guix build --log-file $drv"
log=$(guix build --log-file "$drv")
echo "$log"
gunzip -c "$log"

say "guix gc (no global lock): dead paths before, the collection, dead paths after"
guix gc --list-dead | wc -l
guix gc
guix gc --list-dead | wc -l

say "guix-daemon-rs ctl status"
/host-daemon/daemon ctl status
