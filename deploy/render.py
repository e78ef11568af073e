"""Render a ``${NAME}`` config template the way the nginx image's envsubst step does.

The official nginx image runs ``envsubst`` over ``/etc/nginx/templates/*.template`` with the
names of the environment variables that match ``NGINX_ENVSUBST_FILTER``; every other ``$``
(nginx's own ``$remote_addr``, ...) is left alone. This module does the same in Python so that
the topology test (and a bare-metal install) can render deploy/nginx/nginx.conf exactly as the
container does, without gettext's envsubst binary.

    python deploy/render.py deploy/nginx/nginx.conf --filter '^(NGINX_|TEXTCLF_)' > nginx.conf
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

# envsubst replaces both $NAME and ${NAME} for the names it was given.
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class TemplateError(ValueError):
    """A placeholder the template needs has no value."""


def placeholders(template: str, name_filter: str = "") -> set[str]:
    """Names of the ``${NAME}`` / ``$NAME`` references that ``name_filter`` selects."""
    pattern = re.compile(name_filter)
    names = {m.group(1) or m.group(2) for m in _PLACEHOLDER.finditer(template)}
    return {n for n in names if pattern.search(n)}


def render(template: str, env: Mapping[str, str], name_filter: str = "", *, strict: bool = True) -> str:
    """Substitute the variables of ``env`` whose names match ``name_filter`` (a regex).

    With ``strict``, a placeholder selected by the filter but missing from ``env`` raises
    TemplateError (envsubst would silently leave it; nginx would then refuse the config).
    """
    pattern = re.compile(name_filter)
    if strict:
        missing = sorted(n for n in placeholders(template, name_filter) if n not in env)
        if missing:
            raise TemplateError(f"no value for {', '.join(missing)}")

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if pattern.search(name) and name in env:
            return env[name]
        return match.group(0)

    return _PLACEHOLDER.sub(substitute, template)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("template", type=Path)
    parser.add_argument("--filter", default="^(NGINX_|TEXTCLF_)", help="regex selecting the variables to substitute")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(render(args.template.read_text(encoding="utf-8"), os.environ, args.filter))
    except TemplateError as exc:
        print(f"render: {args.template}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
