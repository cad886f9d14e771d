"""``immctl help TOPIC``: what no single command's help can say."""

from __future__ import annotations

TOPICS = {
    "json": """\
--json (anywhere on the line) prints JSON for scripts instead of tables.

Every command that lists things prints one shape:

    {"items": [ ... ], "next": CURSOR-or-null}

"next" is null when the list is complete; otherwise pass it back where the command takes
a cursor, or use --all (image list). Commands that show one thing print that object, and
errors print {"error": {"code", "message", "detail"}} with the exit code below.
""",
    "exit-codes": """\
0   ok
1   error (a rollout that did not complete, an export cut short, ...)
2   bad input: the message names the value and what to do
3   not found
4   conflict (another rollout is active, an ambiguous digest prefix, ...)
5   forbidden: not an admin (root or a member of imm-admin)
6   refused by policy: the message names the rule
7   verification failed (image verify, ledger verify, audit verify)
69  immd cannot be reached
130 interrupted (Ctrl-C); a rollout being followed goes on in immd
""",
    "refs": """\
An image is named by any of:

    sha256:<64 hex>              its full digest
    sha256:<12+ hex>, <12+ hex>  a unique digest prefix
    NAME@VERSION                 e.g. web@v2
    channel:SERVICE/STAGE        where a channel points now, e.g. channel:web/production

A rollout is named by its id (web-20261205231500-ab12) or by its service (web): the
service's active rollout, else its latest.
""",
    "completion": """\
Shell completion, generated from immctl's own parser:

    immctl completion bash > ~/.local/share/bash-completion/completions/immctl
    immctl completion zsh > ~/.zfunc/_immctl      # with fpath+=(~/.zfunc) before compinit

A pip install also puts them (and the manual page immctl(1)) under the environment's
share/ directory: share/bash-completion/completions/immctl, share/zsh/site-functions/_immctl,
share/man/man1/immctl.1.
""",
}
