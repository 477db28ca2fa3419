#!/bin/sh
# tests/deb_lifecycle.sh WORKDIR OLD.deb NEW.deb
#
# install -> upgrade -> remove -> purge of the labagent package with the real dpkg and the
# real maintainer scripts, in a throwaway copy of this machine: /usr, /etc and /var are
# overlays (writes land in WORKDIR), /run and /tmp are empty tmpfs (no systemd runs there,
# as in a chroot or an image build), all in a private mount namespace that vanishes with
# this process. Nothing on the machine itself changes; two runs at once do not meet.
# Needs root (tests/tests/packaging.rs runs it).
#
# Prints each command as "-- CMD" and its output as "| LINE", then "== STEP" and the state
# the test checks, one "key: value" a line ("rc": the exit status of the step's command).
set -eu

work=$(realpath "$1")
old=$(realpath "$2")
new=$(realpath "$3")
root=$work/root

exec unshare --mount --propagation private -- /bin/sh -eu -s "$work" "$root" "$old" "$new" <<'OUTER'
work=$1 root=$2 old=$3 new=$4
mkdir -p "$root"
for d in usr etc var; do
  mkdir -p "$root/$d" "$work/upper/$d" "$work/wd/$d"
  mount -t overlay overlay \
    -o "lowerdir=/$d,upperdir=$work/upper/$d,workdir=$work/wd/$d" "$root/$d"
done
for l in bin sbin lib lib64; do
  [ -e "/$l" ] && ln -s "usr/$l" "$root/$l"
done
mkdir -p "$root/dev" "$root/proc" "$root/run" "$root/tmp"
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
cp "$old" "$root/tmp/old.deb"
cp "$new" "$root/tmp/new.deb"

exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
  /bin/sh -eu <<'INNER'
last_rc=0
state() {
  echo "== $1"
  echo "rc: $last_rc"
  echo "package: $(dpkg-query -W -f='${Status} ${Version}' labagent 2>/dev/null || echo none)"
  echo "user: $(getent passwd labagent | cut -d: -f1,6,7)"
  echo "groups: $(id -nG labagent 2>/dev/null || true)"
  echo "config: $(stat -c '%a %U:%G' /etc/labagent/config.toml 2>/dev/null || echo absent)"
  if [ -f /etc/labagent/config.toml ]; then
    echo "config-edited: $(grep -c 'edited by the admin' /etc/labagent/config.toml || true)"
  else
    echo "config-edited: absent"
  fi
  echo "etc-dir: $([ -d /etc/labagent ] && echo present || echo absent)"
  echo "state-dir: $(stat -c '%a %U:%G' /var/lib/labagent 2>/dev/null || echo absent)"
  echo "store-file: $([ -f /var/lib/labagent/store/marker ] && echo present || echo absent)"
  echo "unit: $([ -f /lib/systemd/system/labagent.service ] && echo present || echo absent)"
  echo "enabled: $([ -L /etc/systemd/system/multi-user.target.wants/labagent.service ] && echo yes || echo no)"
  echo "masked: $([ "$(readlink /etc/systemd/system/labagent.service 2>/dev/null)" = /dev/null ] && echo yes || echo no)"
  echo "man: $([ -f /usr/share/man/man1/labagent.1.gz ] && echo present || echo absent)"
  echo "binary: $(labagent --version 2>/dev/null || echo absent)"
}
run() {
  echo "-- $*"
  "$@" </dev/null >/tmp/run.out 2>&1 && last_rc=0 || last_rc=$?
  sed 's/^/| /' /tmp/run.out
}

state before
run dpkg -i /tmp/old.deb
state install

# What an administrator does next: edit the config, enable the service, and the agent
# stores messages.
echo '# edited by the admin' >> /etc/labagent/config.toml
run systemctl enable labagent.service
mkdir -p /var/lib/labagent/store
echo kept > /var/lib/labagent/store/marker
chown -R labagent:labagent /var/lib/labagent
state admin

run dpkg -i /tmp/new.deb
state upgrade

# An administrator deleted the config file; configuring the package again must not fail.
mv /etc/labagent/config.toml /tmp/config.toml
run dpkg -i /tmp/new.deb
state reinstall-without-config
mv /tmp/config.toml /etc/labagent/config.toml

run dpkg -r labagent
state remove

run dpkg -P labagent
state purge
INNER
OUTER
