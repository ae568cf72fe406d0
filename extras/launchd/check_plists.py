"""Checks what launchd would read in extras/launchd/*.plist (run by extras/check).

The DTD check (xmllint --valid) says each file is a well-formed property
list; this one loads each with plistlib, as launchd would see it, and checks
what makes the agent work: a known key for every setting (a misspelt key is
silently ignored by launchd), the label matching the file name, the binary's
absolute path, start at load and restart on exit, log paths, the environment
variables the binary reads (from extras/env/*.env.example), a stop timeout no
shorter than the systemd unit's, the worker's --config TOML file, and the
/Users/YOU placeholder that extras/launchd/README.md's install step replaces.
Prints one line per problem and exits 1 if there is any.
"""

import plistlib
import re
import sys
from pathlib import Path

EXTRAS = Path(__file__).resolve().parent.parent
# The launchd.plist(5) keys these agents may use.
KNOWN_KEYS = {
    "Label", "ProgramArguments", "EnvironmentVariables", "WorkingDirectory",
    "RunAtLoad", "KeepAlive", "ThrottleInterval", "ExitTimeOut", "ProcessType",
    "StandardOutPath", "StandardErrorPath", "Umask", "SoftResourceLimits",
    "HardResourceLimits", "UserName", "GroupName", "LowPriorityIO", "Nice",
}
PROCESS_TYPES = {"Background", "Standard", "Adaptive", "Interactive"}
PLACEHOLDER_HOME = "/Users/YOU/"
# Per binary: its systemd unit (for TimeoutStopSec) and env example.
UNITS = {
    "modelrelay-server": "systemd/modelrelay-server.service",
    "modelrelay-worker": "systemd/modelrelay-worker@.service",
}


def env_variables(binary):
    """The variables extras/env/<server|worker>.env.example documents."""
    example = EXTRAS / "env" / f"{binary.removeprefix('modelrelay-')}.env.example"
    return set(re.findall(r"^#?([A-Z][A-Z0-9_]*)=", example.read_text(), re.MULTILINE))


def stop_timeout(binary):
    """TimeoutStopSec of the binary's systemd unit, in seconds."""
    unit = (EXTRAS / UNITS[binary]).read_text()
    return int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE).group(1))


def paths_in(value):
    """Every string in a plist value, nested ones included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from paths_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from paths_in(item)


def problems(path):
    """What is wrong with the agent in `path`, one sentence each."""
    with path.open("rb") as file:
        job = plistlib.load(file, fmt=plistlib.FMT_XML)
    found = []
    if not isinstance(job, dict):
        return ["the top level is not a dict"]
    found += [f"unknown key {key}" for key in sorted(set(job) - KNOWN_KEYS)]
    if job.get("Label") != path.stem:
        found.append(f"Label {job.get('Label')!r} is not the file's name {path.stem!r}")
    arguments = job.get("ProgramArguments")
    if not (isinstance(arguments, list) and arguments and all(isinstance(a, str) for a in arguments)):
        return found + ["ProgramArguments is not a list of strings"]
    binary = Path(arguments[0]).name
    if binary not in UNITS or not arguments[0].startswith("/"):
        found.append(f"ProgramArguments[0] {arguments[0]!r} is not an absolute path to a ModelRelay binary")
        return found
    if job.get("RunAtLoad") is not True:
        found.append("RunAtLoad is not true")
    if job.get("KeepAlive") is not True:
        found.append("KeepAlive is not true")
    if job.get("ProcessType", "Standard") not in PROCESS_TYPES:
        found.append(f"ProcessType {job['ProcessType']!r} is not one of {sorted(PROCESS_TYPES)}")
    for key in ("StandardOutPath", "StandardErrorPath"):
        if not str(job.get(key, "")).startswith(PLACEHOLDER_HOME):
            found.append(f"{key} is not a log file under {PLACEHOLDER_HOME}")
    environment = job.get("EnvironmentVariables", {})
    known = env_variables(binary)
    for name, value in environment.items():
        if name not in known:
            found.append(f"EnvironmentVariables.{name}: {binary} does not read it")
        if not isinstance(value, str):
            found.append(f"EnvironmentVariables.{name} is not a string")
    timeout = job.get("ExitTimeOut", 20)
    if timeout < stop_timeout(binary):
        found.append(f"ExitTimeOut {timeout} is below the systemd unit's TimeoutStopSec {stop_timeout(binary)}")
    if binary == "modelrelay-worker":
        config = arguments.index("--config") + 1 if "--config" in arguments else len(arguments)
        if config >= len(arguments) or not arguments[config].endswith(".toml"):
            found.append("the worker is not given a --config TOML file")
    for value in paths_in(job):
        if value.startswith("/Users/") and not value.startswith(PLACEHOLDER_HOME):
            found.append(f"{value!r} is not under {PLACEHOLDER_HOME}, which the install step replaces")
    return found


def main():
    plists = sorted((EXTRAS / "launchd").glob("*.plist"))
    if not plists:
        print("no plist in extras/launchd")
        return 1
    failed = False
    for path in plists:
        for problem in problems(path):
            print(f"{path.relative_to(EXTRAS)}: {problem}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
