"""Checks extras/windows/*.ps1 as far as this side of Windows can (run by extras/check).

PowerShell itself cannot run here, so nothing is executed: each script is
parsed with the tree-sitter PowerShell grammar (PyPI's tree-sitter-powershell),
and any syntax error (an ERROR or MISSING node: an unclosed brace or string, a
stray token) is reported with its line and column. Then a few rules these
scripts rely on:
- sc.exe is called only through Invoke-Sc, which fails on a non-zero exit
  code (a plain `sc` is Set-Content in Windows PowerShell 5.1);
- no URL: nothing here points at an address the project has not verified;
- each install or uninstall script has comment-based help with .SYNOPSIS,
  `#Requires -RunAsAdministrator`, stops at the first error, and dot-sources
  service-common.ps1.
The grammar accepts a little less than PowerShell does (an empty script block
`{}`, bare words separated by commas as a command's argument); the scripts
avoid those two forms. Prints one line per problem and exits 1 if any.
"""

import re
import sys
from pathlib import Path

import tree_sitter
import tree_sitter_powershell

FOLDER = Path(__file__).resolve().parent
COMMON = "service-common.ps1"
# Commands that must not be called directly.
FORBIDDEN_COMMANDS = {"sc": "use Invoke-Sc (sc is Set-Content in Windows PowerShell 5.1)",
                      "sc.exe": "use Invoke-Sc, which checks the exit code"}
ENTRY_SCRIPT_NEEDS = {
    ".SYNOPSIS": re.compile(r"^\.SYNOPSIS$", re.MULTILINE),
    "#Requires -RunAsAdministrator": re.compile(r"^#Requires -RunAsAdministrator$", re.MULTILINE),
    "$ErrorActionPreference = 'Stop'": re.compile(r"^\$ErrorActionPreference = 'Stop'$", re.MULTILINE),
    f"a dot-sourced {COMMON}": re.compile(rf"^\. \(Join-Path \$PSScriptRoot '{re.escape(COMMON)}'\)$", re.MULTILINE),
}


def nodes(node):
    """`node` and everything under it."""
    yield node
    for child in node.children:
        yield from nodes(child)


def problems(parser, path):
    """What is wrong with the script in `path`, one line each."""
    source = path.read_bytes()
    text = source.decode("utf-8")
    found = []
    for node in nodes(parser.parse(source).root_node):
        row, column = node.start_point
        if node.type == "ERROR" or node.is_missing:
            what = f"missing {node.type}" if node.is_missing else "syntax error"
            snippet = source[node.start_byte:node.end_byte].decode("utf-8", "replace").split("\n")[0][:50]
            found.append(f"{row + 1}:{column + 1}: {what} at {snippet!r}")
        elif node.type == "command_name":
            name = source[node.start_byte:node.end_byte].decode().lower()
            if name in FORBIDDEN_COMMANDS:
                found.append(f"{row + 1}:{column + 1}: {name} called directly: {FORBIDDEN_COMMANDS[name]}")
    for number, line in enumerate(text.splitlines(), 1):
        if re.search(r"\w+://", line):
            found.append(f"{number}: a URL; name no address here")
    if path.name != COMMON:
        for need, pattern in ENTRY_SCRIPT_NEEDS.items():
            if not pattern.search(text):
                found.append(f"no {need}")
    return found


def main():
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
    scripts = sorted(FOLDER.glob("*.ps1"))
    names = {path.name for path in scripts}
    expected = {COMMON} | {f"{verb}-{who}.ps1" for verb in ("install", "uninstall") for who in ("worker", "server")}
    failed = False
    for name in sorted(expected - names):
        print(f"extras/windows/{name}: missing")
        failed = True
    for path in scripts:
        for problem in problems(parser, path):
            print(f"extras/windows/{path.name}:{problem}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
