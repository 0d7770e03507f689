# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_closetrace_global_optspecs
    string join \n pid= pid-tree= cgroup= netns= format= states color= metrics= o/output= duration= close-wait-threshold= tw-warn= close-hook= ring-buffer-size= owner-from-io no-syscall-hooks h/help V/version
end

function __fish_closetrace_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_closetrace_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_closetrace_using_subcommand
    set -l cmd (__fish_closetrace_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c closetrace -n "__fish_closetrace_needs_command" -l pid -d 'Only report sockets owned by this process (repeatable). A thread id is taken as its process' -r
complete -c closetrace -n "__fish_closetrace_needs_command" -l pid-tree -d 'Follow this process and all its descendants, including those forked after start (a Swoole master and its workers, nginx and its workers). Repeatable; combines with --pid' -r
complete -c closetrace -n "__fish_closetrace_needs_command" -l cgroup -d 'Only sockets of this cgroup (v2) and the cgroups below it, e.g. system.slice/nginx.service or a path under the cgroup2 mount. Applied in the kernel' -r
complete -c closetrace -n "__fish_closetrace_needs_command" -l netns -d 'Only sockets of this network namespace: a namespace file (/run/netns/NAME, /proc/PID/ns/net) or its inode number. Applied in the kernel' -r
complete -c closetrace -n "__fish_closetrace_needs_command" -l format -d 'Output format' -r -f -a "text\t''
json\t''"
complete -c closetrace -n "__fish_closetrace_needs_command" -l color -d 'Colour in the text view: auto (on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t'On a terminal, unless NO_COLOR is set (and not empty)'
always\t''
never\t''"
complete -c closetrace -n "__fish_closetrace_needs_command" -l metrics -d 'Serve Prometheus metrics at /metrics on this port of 127.0.0.1, or on ADDR:PORT. Off by default; an address other than loopback exposes process names and destinations to whoever can reach it' -r
complete -c closetrace -n "__fish_closetrace_needs_command" -s o -l output -d 'Write events here instead of stdout' -r -F
complete -c closetrace -n "__fish_closetrace_needs_command" -l duration -d 'Stop after this long (e.g. 500ms, 30s, 5m). Default: until Ctrl-C' -r
complete -c closetrace -n "__fish_closetrace_needs_command" -l close-wait-threshold -d 'A socket in CLOSE_WAIT this long, not closed by its holder, is reported as a leak (e.g. 500ms, 2s, 5m)' -r
complete -c closetrace -n "__fish_closetrace_needs_command" -l tw-warn -d 'Report TIME_WAIT pressure when a destination\'s TIME_WAIT sockets reach this share of the ephemeral ports (0 < ratio <= 1)' -r
complete -c closetrace -n "__fish_closetrace_needs_command" -l close-hook -d 'How to hook tcp_close: auto (fentry, else kprobe, else inferred from transitions), or force one method' -r -f -a "auto\t'fentry, else kprobe, else inference from transitions'
fentry\t''
kprobe\t''
transitions\t''"
complete -c closetrace -n "__fish_closetrace_needs_command" -l ring-buffer-size -d 'Ring buffer size in bytes: a power of two, at least one page. Default: 2 MiB, or 16 MiB with --states: about 300 and 400 ms of the busiest churn here (where every connection leaves a record in the default mode), enough to ride out the reader being scheduled out. Mapped twice, so resident memory counts it twice' -r
complete -c closetrace -n "__fish_closetrace_needs_command" -l states -d 'Stream every state change and every close too. Without it closetrace hunts: it reports leaks and their end, TIME_WAIT pressure, connect and bind failures, listen overflows and losses, and the kernel sends only the transitions those need (all transitions are still counted)'
complete -c closetrace -n "__fish_closetrace_needs_command" -l owner-from-io -d 'Also learn owners from every send and receive (the sock_send_length and sock_recv_length tracepoints, 6.3+). Off by default: owners come from accept(), connect(), listen() and close, once per connection, and this adds a program run to every message (see the README\'s Performance section for what it costs). Useful where an fd is handed to another process that neither accepted nor closes it'
complete -c closetrace -n "__fish_closetrace_needs_command" -l no-syscall-hooks -d 'Attach no syscall tracepoint (accept, bind; shutdown too before Linux 5.15). While any syscall tracepoint is attached, the kernel takes its slower syscall path for every syscall of every process, 30-50 ns each here (see the README\'s Performance section). Without them: accepted sockets belong to their listener\'s owner until the acceptor closes them, and accept() running out of fds (EMFILE, ENFILE) and bind() failures are not reported (connect() failures still are; before 5.15 a half-close counts as a close)'
complete -c closetrace -n "__fish_closetrace_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c closetrace -n "__fish_closetrace_needs_command" -s V -l version -d 'Print version'
complete -c closetrace -n "__fish_closetrace_needs_command" -f -a "report" -d 'Sum up JSON lines that closetrace wrote: leaks per process, the busiest TIME_WAIT destinations, errors, losses and the time range. Needs no privileges'
complete -c closetrace -n "__fish_closetrace_needs_command" -f -a "generate-assets" -d 'Write the man page and shell completions into DIR (packaging; used by `cargo xtask assets`)'
complete -c closetrace -n "__fish_closetrace_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c closetrace -n "__fish_closetrace_using_subcommand report" -l html -d 'Also write an HTML page with charts (CLOSE_WAIT leaks per process, TIME_WAIT per destination, over time), readable offline' -r -F
complete -c closetrace -n "__fish_closetrace_using_subcommand report" -s h -l help -d 'Print help'
complete -c closetrace -n "__fish_closetrace_using_subcommand generate-assets" -s h -l help -d 'Print help'
complete -c closetrace -n "__fish_closetrace_using_subcommand help; and not __fish_seen_subcommand_from report generate-assets help" -f -a "report" -d 'Sum up JSON lines that closetrace wrote: leaks per process, the busiest TIME_WAIT destinations, errors, losses and the time range. Needs no privileges'
complete -c closetrace -n "__fish_closetrace_using_subcommand help; and not __fish_seen_subcommand_from report generate-assets help" -f -a "generate-assets" -d 'Write the man page and shell completions into DIR (packaging; used by `cargo xtask assets`)'
complete -c closetrace -n "__fish_closetrace_using_subcommand help; and not __fish_seen_subcommand_from report generate-assets help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
