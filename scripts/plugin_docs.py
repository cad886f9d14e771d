"""Write docs/plugins.md from imm/plugins/hookspecs.py (tests/test_plugins.py checks it is current).

    .venv/bin/python scripts/plugin_docs.py
"""

from __future__ import annotations

import inspect
from pathlib import Path

from imm.plugins import base, hookspecs

INTRO = """# Writing imm plugins

imm uses [pluggy](https://pluggy.readthedocs.io/). A plugin is a module (or object) with
functions marked `@hookimpl`, installed as a distribution with an entry point in the `imm`
group; immd loads every such entry point at start-up. The built-in `local`, `aws` and `azure`
providers and the `haproxy`, `dns` and `cloudlb` routers are registered exactly this way, with
`@hookimpl(trylast=True)`, so a plugin of the same kind registered later wins.

```toml
# your plugin's pyproject.toml
[project.entry-points.imm]
myplugin = "myplugin.hooks"
```

```python
from imm.plugins.hookspecs import hookimpl

@hookimpl
def imm_policy_check(image, service, rollout):
    if image["ladder_step"] < 4 and service["name"] == "payments":
        return "payments only takes fully baked images (ladder step 4)"
    return None
```

A hook implementation with a misspelled name or argument, or a plugin that fails to import,
stops immd at start-up with a message naming the plugin. `IMM_BLOCK_PLUGINS=a,b` or
`[plugins] block = ["a"]` in the config keeps named plugins from loading; `immctl status` lists
what is loaded and which hooks each implements. Hooks whose docstring says so may return an
awaitable; immd awaits it.

Providers and routers subclass `imm.plugins.base.Provider` / `Router` and are registered from
`imm_register_providers` / `imm_register_routers`. Their methods are synchronous: immd runs them
in worker threads with a per-provider concurrency limit. Each receives a `PluginContext`
(`state_dir`, `log`). Shared cloud plumbing (settings, credentials from env or files, per-region
driver caching, retries with backoff, error naming) is in `imm.plugins.cloud`; state files are
written with `imm.plugins.statefile`.

## Optional operations

A provider lists the optional operations it implements in `features` (a frozenset of
`imm.plugins.base.Feature`); imm asks `supports(Feature.X)` and never probes for methods. Every
optional operation is declared on `Provider` and raises `imm.errors.Unsupported` (HTTP 501)
naming the provider and the feature unless the provider overrides it:
"""


def _operations() -> list[str]:
    out = []
    for feature in base.Feature:
        op = getattr(base.Provider, feature.value, None)
        if op is None:
            out.append(f"- `{feature.value}`: launch() is idempotent per "
                       f"`LaunchRequest.client_token` (no method of its own)")
            continue
        sig = str(inspect.signature(op)).replace("'", "")
        doc = " ".join((inspect.getdoc(op) or "").split())
        out.append(f"- `{feature.value}{sig}`: {doc}")
    out += ["", "Routers declare `features` too (`imm.plugins.base.RouterFeature`): "
            + ", ".join(f"`{f.value}`" for f in base.RouterFeature)
            + ". Without `health_check`, `Backend.healthy` stays None and imm gates on the "
              "instance running.", "", "## Hooks", ""]
    return out


def render() -> str:
    out = [INTRO, *_operations()]
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("imm_"):
            sig = str(inspect.signature(fn)).replace("'", "")
            out += [f"### `{name}{sig}`", "", inspect.getdoc(fn) or "", ""]
    return "\n".join(out)


if __name__ == "__main__":
    (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").write_text(render())
