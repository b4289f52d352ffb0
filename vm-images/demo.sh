#!/bin/sh
# The Rush demo scenario: a short narrated run of the real daemon and CLI.
#
# Runs natively (cargo xtask demo, where BPF LSM or Landlock can enforce file tokens; the
# file scenes then show the backend's own behaviour) or inside a QEMU guest (where neither
# can, or with --vm). Needs: RUSH_BIN (dir with rush-agentd and rush), root, curl, and
# busybox with its httpd and wget applets (the local server and a client that names the
# errno); it checks them first and stops, naming what is missing, rather than show a scene
# that cannot show what it says. Every outcome shown is the kernel's: nothing is simulated.
set -u
BIN=${RUSH_BIN:?RUSH_BIN must name the directory holding rush and rush-agentd}
STATE=$(mktemp -d /tmp/rush-demo.XXXXXX)
SOCK=$STATE/agentd.sock
WS=/srv/rush-demo
export RUSH_SOCKET=$SOCK
PATH=$BIN:$PATH

scene() { printf '\n\033[1m## %s\033[0m\n' "$*"; }
show() {
    printf '$'
    for a in "$@"; do case $a in *[\ \;\&\|\>\<]*) printf " '%s'" "$a" ;; *) printf ' %s' "$a" ;; esac; done
    printf '\n'
    "$@"; rc=$?; [ $rc -eq 0 ] || printf '(exit status %s)\n' "$rc"; return 0
}
fail() { printf '\nDEMO FAILED: %s\n' "$*"; exit 1; }
# Like show, keeping the output in $OUT and the exit status in $RC, for the checks after it.
show_kept() {
    printf '$'
    for a in "$@"; do case $a in *[\ \;\&\|\>\<]*) printf " '%s'" "$a" ;; *) printf ' %s' "$a" ;; esac; done
    printf '\n'
    "$@" >"$STATE/kept" 2>&1; RC=$?; OUT=$(cat "$STATE/kept"); printf '%s\n' "$OUT"
    [ $RC -eq 0 ] || printf '(exit status %s)\n' "$RC"; return 0
}
# Every prerequisite, checked before anything starts; all that is missing is named at once.
prerequisites() {
    missing=""
    [ "$(id -u)" -eq 0 ] || missing="$missing\n  root (the daemon loads BPF programs and creates cgroups)"
    for b in rush rush-agentd; do
        [ -x "$BIN/$b" ] || missing="$missing\n  $BIN/$b (RUSH_BIN must hold the built binaries)"
    done
    command -v curl >/dev/null 2>&1 || missing="$missing\n  curl (the network scenes' client)"
    if ! command -v busybox >/dev/null 2>&1; then
        missing="$missing\n  busybox (the network scenes' local HTTP server; Debian/Ubuntu: busybox-static)"
    else
        for applet in httpd wget; do
            busybox --list 2>/dev/null | grep -qx $applet \
                || missing="$missing\n  busybox applet $applet (this busybox was built without it)"
        done
    fi
    [ -z "$missing" ] || fail "$(printf "missing prerequisites (\`cargo xtask setup\` installs them):$missing")"
}
start_daemon() {
    # A daemon killed earlier left its socket: the wait below must see the new one.
    rm -f "$SOCK"
    rush-agentd --config "${CONFIG:-/dev/null}" --ephemeral --state-dir "$STATE" --socket "$SOCK" \
        --pin-dir /sys/fs/bpf/rush-demo --cgroup-parent rush-demo 2>>"$STATE/daemon.log" &
    DAEMON=$!
    i=0
    while [ ! -S "$SOCK" ]; do
        i=$((i + 1)); [ $i -lt 200 ] || { cat "$STATE/daemon.log"; fail "rush-agentd did not start"; }
        sleep 0.1
    done
}
cleanup() {
    [ -n "${DAEMON:-}" ] && kill "$DAEMON" 2>/dev/null; [ -n "${HTTPD:-}" ] && kill "$HTTPD" 2>/dev/null
    [ -n "${API:-}" ] && kill "$API" 2>/dev/null; [ -n "${TMUX_SOCK:-}" ] && tmux -L "$TMUX_SOCK" kill-server 2>/dev/null
    for d in /sys/fs/cgroup/rush-demo/* /sys/fs/cgroup/unified/rush-demo/*; do
        [ -d "$d" ] && { echo 1 > "$d/cgroup.kill"; sleep 0.2; rmdir "$d"; }
    done 2>/dev/null
    rm -rf /sys/fs/bpf/rush-demo "$WS" 2>/dev/null
    # The session store (rollback scene): unmounted by the daemon as it exits.
    [ -n "${DAEMON:-}" ] && wait "$DAEMON" 2>/dev/null
    umount "$STATE-workspaces/btrfs" 2>/dev/null
    rm -rf "$STATE-workspaces" 2>/dev/null
}
trap cleanup EXIT
prerequisites

# A detached full-screen agent on a terminal of its own: tmux plays the person at a
# terminal (attach, type, detach), and a script types into it with nobody attached.
terminal_scene() {
    if ! command -v tmux >/dev/null 2>&1; then
        scene "Terminals: skipped here (no tmux to play the person at the terminal; \`cargo xtask demo\` on the host shows it)"
        return
    fi
    scene "Terminals: a full-screen agent runs detached on a terminal of its own"
    show rush agent spawn board --tty --detach -- sh -c \
        'printf "\033[?1049h"; n=0; while read -r l; do n=$((n+1)); printf "\033[H\033[2J== board ==\nlines typed: %s\nlast: %s\n" $n "$l"; done'
    TMUX_SOCK=rush-demo-$$
    printf '$ tmux: rush agent attach board   # then types "hello" and Enter, then Ctrl-\\ d\n'
    tmux -L "$TMUX_SOCK" new-session -d -x 60 -y 8 "rush agent attach board; sleep 30"
    sleep 1
    tmux -L "$TMUX_SOCK" send-keys hello Enter
    sleep 1
    tmux -L "$TMUX_SOCK" capture-pane -p | sed -n '1,4p'
    tmux -L "$TMUX_SOCK" capture-pane -p | grep -q 'last: hello' || fail "the attached terminal did not show what was typed"
    tmux -L "$TMUX_SOCK" send-keys 'C-\' d
    sleep 1
    tmux -L "$TMUX_SOCK" capture-pane -p | grep 'detached from' || fail "the detach keys did not detach"
    tmux -L "$TMUX_SOCK" kill-server 2>/dev/null
    scene "Detached, it runs on; a script types into it, and the next attach shows its screen"
    show rush agent status board
    show rush agent send board 'from a script' --enter
    tmux -L "$TMUX_SOCK" new-session -d -x 60 -y 8 "rush agent attach board --read-only; sleep 30"
    sleep 1
    printf '$ tmux: rush agent attach board --read-only\n'
    tmux -L "$TMUX_SOCK" capture-pane -p | sed -n '1,4p'
    tmux -L "$TMUX_SOCK" capture-pane -p | grep -q 'last: from a script' || fail "the re-attach did not show the screen"
    tmux -L "$TMUX_SOCK" kill-server 2>/dev/null
    show rush audit --agent board --limit 3
    show rush agent kill board
}

# A metered model API call by the official anthropic SDK over TLS (the test CA), from a
# confined agent whose only network is its meter; past its budget the SDK gets HTTP 402.
meter_scene() {
    repo=${RUSH_REPO:-}
    py=${RUSH_SDK_PYTHON:-}
    if [ -z "$repo" ] || [ ! -x "$py" ] || ! command -v python3 >/dev/null 2>&1; then
        scene "Cost: skipped here (the official SDKs' venv is not here; \`cargo xtask demo\` on the host shows it)"
        return
    fi
    python3 "$repo/kernel-tests/fixtures/model_api.py" --cert "$repo/testdata/tls/localhost.pem" \
        --key "$repo/testdata/tls/localhost.key" --port-file "$STATE/api.port" --log "$STATE/api.log" >/dev/null 2>&1 &
    API=$!
    i=0
    while [ ! -s "$STATE/api.port" ]; do
        i=$((i + 1)); [ $i -lt 100 ] || fail "the local model API did not start"
        sleep 0.1
    done
    cat > "$STATE/meter.toml" <<EOF2
[meter]
ca_file = "$repo/testdata/tls/ca.pem"
[meter.routes.anthropic]
upstream = "https://localhost:$(cat "$STATE/api.port")"
env = ["ANTHROPIC_BASE_URL"]
prices = { "claude-*" = { input = 3, output = 15 } }
EOF2
    kill "$DAEMON"; wait "$DAEMON" 2>/dev/null
    CONFIG=$STATE/meter.toml
    start_daemon
    scene "Cost: the official anthropic SDK, confined (--net deny), calls a model API over TLS through its meter"
    echo "(the API is a local stand-in on TLS with a test CA; the meter has a route to it: [meter.routes.anthropic])"
    show_kept rush agent spawn writer --net deny --budget 'cost:$0.015' -- \
        "$py" "$repo/kernel-tests/fixtures/sdk_calls.py" anthropic anthropic-stream anthropic
    case $OUT in *"ok anthropic anthropic 1000+500"*"error anthropic anthropic 402"*) ;;
        *) fail "the metered calls did not go through, then get 402" ;; esac
    echo "(1000 input + 500 output tokens at \$3/\$15 per million: 10,500 µ\$ a call; the third is past the budget)"
    show rush agent status writer
    kill "$API" 2>/dev/null
}

# Two agents on one repository: coder broadcasts and claims parser/; helper sees the intent,
# is refused a write there (by the kernel where BPF LSM runs), and delegates a review to
# reviewer, whose answer flows back to coder. Every `rush` here runs inside an agent, as it.
coordination_scene() {
    scene "Coordination: coder declares what it is doing and claims parser/ (a leased, exclusive claim)"
    R=$BIN/rush
    mkdir -p "$WS/repo/parser" && printf 'fn parse() {}\n' > "$WS/repo/parser/lib.rs"
    show rush agent spawn reviewer --detach -- sh -c \
        "task=\$($R --json agent inbox --wait --timeout 120s); id=\$(echo \"\$task\" | sed -n 's/.*\"id\": *\([0-9]*\).*/\\1/p' | head -1); printf 'review of parser: LGTM, one nit in lib.rs' | $R agent publish review/parser --stdin --for coder && echo 'review sent to coder' | $R agent publish task/\$id --stdin"
    show rush agent spawn coder --detach -- sh -c \
        "$R agent broadcast 'optimizing parser' --paths $WS/repo/parser && $R agent claim parser --paths $WS/repo/parser && $R agent results review/parser --wait --timeout 120s; echo; sleep 600"
    i=0
    until rush agent claims | grep -q '^parser '; do
        i=$((i + 1)); [ $i -lt 100 ] || fail "coder never claimed parser"
        sleep 0.2
    done
    show rush agent claims
    scene "helper looks before it writes (the intent, who holds the path), is refused there, and delegates a review"
    show_kept rush agent spawn helper -- sh -c \
        "$R agent query-intents --paths $WS/repo/parser; echo '// helper' >> $WS/repo/parser/lib.rs && echo 'helper: write went through' || echo 'helper: write refused'; $R agent claims --path $WS/repo/parser/lib.rs; $R agent delegate 'review parser changes' reviewer --wait --timeout 120s"
    if rush --json doctor | grep -A2 '"path claims"' | grep -q '"holds": true'; then
        case $OUT in *"write refused"*) ;; *) fail "the claimed path was writable by another agent" ;; esac
        sleep 0.5
        show rush audit --agent helper --kind claim_deny --limit 1
        rush audit --agent helper --kind claim_deny | grep -q parser || fail "the refused write is not audited naming the claim"
    else
        echo "(no BPF LSM on this kernel: path claims are advisory, as \`rush doctor\` says; \`cargo xtask demo --vm\` shows the EPERM)"
    fi
    case $OUT in *"review sent to coder"*) ;; *) fail "the delegated review did not come back to helper" ;; esac
    scene "reviewer's answer flows back to coder, which was waiting for it"
    i=0
    until rush agent logs coder | grep -q LGTM; do
        i=$((i + 1)); [ $i -lt 100 ] || fail "the review never reached coder"
        sleep 0.2
    done
    show rush agent logs coder
    show rush events --kinds intent,claim,task,result --limit 8
    scene "coder is killed: its claim goes with it, and with the claim the kernel's denies"
    show rush agent kill coder
    i=0
    while rush agent claims | grep -q '^parser '; do
        i=$((i + 1)); [ $i -lt 50 ] || fail "the killed holder's claim was not released"
        sleep 0.2
    done
    show rush agent claims
}

# The human attention queue: three agents that may only read migrations/ each ask, as
# themselves, for write on their file and wait; the requests share a batch key (capability,
# ops, directory), so the person sees one item and approves it once. A fourth request,
# with a 2 s deadline nobody meets, is rejected by the daemon's clock.
approvals_scene() {
    if ! rush doctor | grep -Eq '^file tokens +yes'; then
        scene "Approvals: skipped here (no file tokens on this kernel: an approved capability could not be granted; \`cargo xtask demo --vm\` shows it)"
        return
    fi
    MW=$WS/migrate
    R=$BIN/rush
    mkdir -p "$MW/migrations" "$MW/tools"
    printf -- '-- 000: the first schema\n' > "$MW/migrations/000_init.sql"
    for n in 001 002 003; do : > "$MW/migrations/$n.sql"; done
    cat > "$MW/tools/migrate" <<EOF2
# migrate NNN [flags of rush approval request]: writes migrations/NNN.sql, asking first
# for write access when it has none.
n=\$1; shift; f=$MW/migrations/\$n.sql
w() { { printf -- '-- %s: written by an agent\n' "\$n" > "\$f"; } 2>/dev/null; }
if w; then echo "wrote migrations/\$n.sql"; exit 0; fi
echo "migrations/ is read-only to me: asking for write on \$n.sql"
$R approval request --kind capability --path "\$f" --ops write --action "write migrations/" --wait "\$@" \\
    || { echo "not approved: migrations/\$n.sql left as it was"; exit 3; }
until w; do sleep 0.2; done
echo "wrote migrations/\$n.sql"
EOF2
    scene "Approvals: three agents may only read migrations/; each asks for write on its file, and waits"
    show cat "$MW/tools/migrate"
    for n in 1 2 3; do
        show rush agent spawn mig$n --detach --allow "$MW:read" --allow "$R:read,exec" -- sh "$MW/tools/migrate" 00$n
    done
    i=0
    until [ "$(rush approvals | grep -c ' mig[123] .* capability ')" -eq 3 ]; do
        i=$((i + 1)); [ $i -lt 100 ] || { rush approvals; fail "the three agents' requests are not all pending"; }
        sleep 0.2
    done
    scene "Alike (one key: capability, write, migrations/) and within the batch window: one item for the person"
    show rush approvals
    KEY=capability:write:$MW/migrations
    rush approvals | grep -q "^batch $KEY: 3 requests" || fail "the three requests were not batched as one item"
    show rush approve --batch "$KEY"
    i=0
    until [ -s "$MW/migrations/001.sql" ] && [ -s "$MW/migrations/002.sql" ] && [ -s "$MW/migrations/003.sql" ]; do
        i=$((i + 1)); [ $i -lt 100 ] || fail "the approved agents did not write their migrations"
        sleep 0.2
    done
    scene "Approved once, all three proceed: each got its token and wrote its file"
    [ "${BACKEND:-}" = landlock ] \
        && echo "(Landlock: each approval restarted its agent under the widened rules; the script ran again, and wrote)"
    show head "$MW/migrations/001.sql" "$MW/migrations/002.sql" "$MW/migrations/003.sql"
    show rush agent logs mig2
    show rush audit --agent mig2 --kind approval_requested,approval_decided,grant

    scene "A fourth request, with a 2 s deadline and --on-timeout reject: nobody answers it"
    show rush agent spawn mig4 --detach --allow "$MW:read" --allow "$R:read,exec" -- \
        sh "$MW/tools/migrate" 000_init --timeout 2s --on-timeout reject
    i=0
    until ID=$(rush --json approvals | sed -n 's/^ *"id": *\([0-9]*\),*$/\1/p' | head -1); [ -n "$ID" ]; do
        i=$((i + 1)); [ $i -lt 50 ] || fail "mig4's request is not pending"
        sleep 0.1
    done
    show rush approvals
    i=0
    until rush approval show "$ID" | grep -q expired; do
        i=$((i + 1)); [ $i -lt 50 ] || fail "request $ID did not expire at its deadline"
        sleep 0.2
    done
    show_kept rush approval show "$ID"
    case $OUT in *"state:"*expired*"expired at its deadline"*) ;; *) fail "request $ID is not shown expired at its deadline" ;; esac
    i=0
    until rush agent logs mig4 | grep -q 'not approved'; do
        i=$((i + 1)); [ $i -lt 50 ] || fail "mig4 was not told its request expired"
        sleep 0.2
    done
    show rush agent logs mig4
    grep -q 'first schema' "$MW/migrations/000_init.sql" || fail "the expired request's file was written"
}

budget_scenes() {
    scene "Budgets: a busy loop with cpu:2s is frozen when it has used its 2 s of CPU"
    show rush agent spawn spinner --detach --budget cpu:2s,pids:32 -- sh -c 'while :; do :; done'
    i=0
    until rush agent status spinner | grep -q 'paused (budget:cpu)'; do
        i=$((i + 1)); [ $i -lt 300 ] || fail "the cpu budget did not freeze the agent"
        sleep 0.2
    done
    show rush agent status spinner
    scene "Resuming needs a raised budget; with one it runs on"
    show rush agent resume spinner
    show rush agent resume spinner --budget cpu:4s
    show rush agent kill spinner
    scene "A fork bomb stops at pids:8 (fork fails with EAGAIN), and the refusal is audited"
    show rush agent spawn forker --budget pids:8 -- sh -c \
        'for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 3 & done 2>&1 | head -1; wait'
    sleep 0.5
    show rush audit --agent forker --limit 3
    rush audit --agent forker | grep -q fork_refused || fail "the refused fork was not audited"
}

rollback_scene() {
    scene "Time travel: checkpoint a workspace, let an agent wreck it, roll back"
    mkdir -p "$WS/app" && printf 'version 1\n' > "$WS/app/main.txt" && printf 'keep me\n' > "$WS/app/README"
    show rush session create demo --workspace "$WS/app"
    cd "$WS/app" || fail "the workspace is gone"
    show rush checkpoint clean
    show rush agent spawn wrecker --session demo -- sh -c 'echo WRECKED > main.txt; rm README; echo junk > junk.txt'
    show ls
    show rush timeline diff clean main
    show rush rollback clean
    cd "$WS/app" || fail "the workspace is gone"
    show ls
    show cat main.txt
    grep -qx 'version 1' main.txt && [ -f README ] && [ ! -e junk.txt ] || fail "the rollback did not restore the files"
    scene "The rollback itself was kept as a checkpoint: it can be undone"
    show rush timeline list
    cd /
}

# Landlock fixes an agent's rules when it starts: what BPF LSM changes under a running agent
# (revoke, expiry) freezes it here, then restarts it under the new rules (or kills it).
landlock_scenes() {
    scene "Root inside a file-confined agent: kill the daemon, mount, write cgroup.procs (Landlock)"
    show rush agent spawn rooted --allow "$WS/project:read" -- sh -c \
        "kill -9 $DAEMON; mount -t tmpfs none /mnt; echo \$\$ > /sys/fs/cgroup/unified/cgroup.procs; echo still here"
    kill -0 "$DAEMON" || fail "an agent killed the daemon"

    scene "Revoke: Landlock cannot change a running process's rules, so the agent is frozen, then restarted under the new ones"
    show rush agent spawn reader --detach --allow "$WS/project:read" -- sh -c \
        "while true; do if cat $WS/project/notes.txt >/dev/null 2>&1; then echo 'read ok'; else echo 'read DENIED'; fi; sleep 1; done"
    sleep 2.5
    show rush capability revoke reader --path "$WS/project"
    sleep 2
    show rush agent logs reader
    rush agent logs reader | grep -q 'restarted under new Landlock rules' || fail "the revoke did not restart the agent"
    rush agent logs reader | tail -1 | grep -q 'read DENIED' || fail "the restarted agent can still read"
    show rush audit --agent reader --limit 4
    show rush agent kill reader

    scene "A token with a 5 s TTL: at its deadline the daemon freezes the agent and restarts it without the token"
    echo "(under Landlock the expiry needs the daemon running; BPF LSM lapses it in the kernel)"
    show rush agent spawn timed --detach --allow "$WS/project:read:5s" -- sh -c \
        "while true; do if cat $WS/project/notes.txt >/dev/null 2>&1; then echo \"\$(date +%T) read ok\"; else echo \"\$(date +%T) read DENIED\"; fi; sleep 1; done"
    sleep 7
    show rush agent logs timed
    rush agent logs timed | grep -q 'read ok' && rush agent logs timed | tail -1 | grep -q 'read DENIED' \
        || fail "the TTL did not lapse"
    show rush agent kill timed
}

mkdir -p "$WS/project" "$WS/private" "$STATE/www"
echo "notes of the project" > "$WS/project/notes.txt"
echo "do not read" > "$WS/private/keys.txt"
echo "hello from a local server" > "$STATE/www/index.html"
HTTPD=
busybox httpd -f -p 127.0.0.1:8080 -h "$STATE/www" & HTTPD=$!
# The network scenes need this server answering: without it an allowed connection fails
# too, and a refusal looks no different from a server that is not there.
i=0
until [ "$(curl -sS --max-time 2 http://127.0.0.1:8080/ 2>/dev/null)" = "hello from a local server" ]; do
    i=$((i + 1))
    [ $i -lt 50 ] && kill -0 "$HTTPD" 2>/dev/null \
        || fail "the local HTTP server (busybox httpd on 127.0.0.1:8080) does not answer (port taken?): the network scenes could not show a refused and an allowed connection"
    sleep 0.1
done
start_daemon

scene "What this kernel lets Rush guarantee"
show rush doctor

scene "Network: a plain curl reaches the local server"
show curl -sS --max-time 5 http://127.0.0.1:8080/
scene "The same curl as an agent with --net deny: the kernel refuses its connect()"
show_kept rush agent spawn researcher --net deny -- curl -sS --max-time 5 http://127.0.0.1:8080/
[ $RC -ne 0 ] || fail "the agent with --net deny reached the server"
echo "(curl does not name the errno; busybox wget does:)"
show_kept rush agent spawn researcher --net deny -- busybox wget -q -O- http://127.0.0.1:8080/
case $OUT in *"Operation not permitted"*) ;; *) fail "the refused connect() did not fail with EPERM" ;; esac
show_kept rush audit --agent researcher --kind net_deny --limit 2
case $OUT in *net_deny*127.0.0.1:8080*) ;; *) fail "the refused connect() is not in the audit trail" ;; esac
scene "With the server on its allow list, it goes through"
show_kept rush agent spawn fetcher --net 127.0.0.1:8080 -- curl -sS --max-time 5 http://127.0.0.1:8080/
[ $RC -eq 0 ] && [ "$OUT" = "hello from a local server" ] || fail "the allowed connection did not reach the server"

if ! rush doctor | grep -Eq '^file tokens +yes'; then
    scene "Files: this kernel cannot attach BPF LSM programs, so a file grant is refused, not faked"
    show rush agent spawn editor --allow "$WS/project:read,write" -- cat "$WS/project/notes.txt"
    echo "(run \`cargo xtask demo --vm\` to see file tokens enforced by BPF LSM in a QEMU guest)"
    terminal_scene
    meter_scene
    coordination_scene
    approvals_scene
    budget_scenes
    rollback_scene
    printf '\ndemo finished\n'
    exit 0
fi

BACKEND=bpf-lsm
rush doctor | grep -Eq '^file tokens +yes +by Landlock' && BACKEND=landlock
[ $BACKEND = landlock ] && echo "(BPF LSM programs cannot attach here: file tokens are enforced by Landlock)"

scene "Files: an agent granted $WS/project reads and writes there..."
show rush agent spawn editor --allow "$WS/project:read,write" -- sh -c \
    "cat $WS/project/notes.txt && echo 'edited by the agent' >> $WS/project/notes.txt && echo wrote"
show cat "$WS/project/notes.txt"
SECRET=/etc/shadow
[ -e $SECRET ] || SECRET=/etc/hosts
scene "...and is refused everything else: a sibling directory, $SECRET (EPERM from BPF LSM, EACCES from Landlock)"
show rush agent spawn editor --allow "$WS/project:read,write" -- cat "$WS/private/keys.txt"
show rush agent spawn editor --allow "$WS/project:read,write" -- cat $SECRET
sleep 0.5
show_kept rush audit --agent editor --kind file_deny --limit 3
if rush doctor | grep -Eq '^file denials audited +yes'; then
    rush audit --agent editor --kind file_deny | grep -q "path=$WS/private/keys.txt" \
        || fail "the refused read is not in the audit trail"
else
    echo "(this kernel does not report these denials to Rush: see \`rush doctor\`, file denials audited)"
fi

if [ $BACKEND = landlock ]; then
    landlock_scenes
    terminal_scene
    meter_scene
    coordination_scene
    approvals_scene
    budget_scenes
    rollback_scene
    printf '\ndemo finished\n'
    exit 0
fi

scene "Root inside an agent cannot reach around it: kill the daemon, mount, write cgroup.procs"
show rush agent spawn rooted --net deny -- sh -c \
    "kill -9 $DAEMON; mount -t tmpfs none /mnt; echo \$\$ > /sys/fs/cgroup/cgroup.procs; echo still here"
kill -0 "$DAEMON" || fail "an agent killed the daemon"
show rush audit --agent rooted --limit 3

scene "Revoke while the agent holds the file open: its next read fails"
show rush agent spawn reader --detach --allow "$WS/project:read" -- sh -c \
    "exec 3< $WS/project/notes.txt; while true; do if dd bs=1 count=5 <&3 2>/dev/null >/dev/null; then echo 'read ok'; else echo 'read DENIED'; fi; sleep 1; done"
sleep 2.5
show rush capability revoke reader --path "$WS/project"
sleep 2
show rush agent logs reader
rush agent logs reader | grep -q 'read DENIED' || fail "the revoke did not reach the open file"
show rush agent kill reader

scene "A token with a 5 s TTL lapses in the kernel, with the daemon gone"
show rush agent spawn timed --detach --allow "$WS/project:read:5s" -- sh -c \
    "while true; do if cat $WS/project/notes.txt >/dev/null 2>&1; then echo \"\$(date +%T) read ok\"; else echo \"\$(date +%T) read DENIED\"; fi; sleep 1; done"
LOG=$STATE/logs/timed.log
sleep 1
printf '$ kill -9 rush-agentd   # nobody left to expire anything\n'
kill -9 "$DAEMON"; wait "$DAEMON" 2>/dev/null
sleep 6
show cat "$LOG"
grep -q 'read ok' "$LOG" && grep -q 'read DENIED' "$LOG" || fail "the TTL did not lapse"
for d in /sys/fs/cgroup/rush-demo/timed /sys/fs/cgroup/unified/rush-demo/timed; do
    [ -d "$d" ] && echo 1 > "$d/cgroup.kill"
done 2>/dev/null
sleep 0.3
rm -rf /sys/fs/bpf/rush-demo
start_daemon

terminal_scene
meter_scene
coordination_scene
approvals_scene
budget_scenes
rollback_scene
printf '\ndemo finished\n'
