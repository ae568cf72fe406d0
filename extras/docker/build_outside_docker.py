"""Runs extras/docker/Dockerfile's build step outside Docker (scripts/test runs it).

No Docker daemon runs here, and the release workflow builds the image only on
a tag, so this is what the tests can do to keep `docker build` from breaking
unnoticed:
1. The build context is made as Docker makes it: the repository's files
   (tracked, and untracked ones git does not ignore) less what .dockerignore
   leaves out, copied to a fresh folder. A .dockerignore line that drops a
   source file, Cargo.lock or an asset the code includes fails the build here.
2. Every source of a COPY (without --from) must exist in that context.
3. The RUN that holds `cargo build` is taken from the Dockerfile itself, its
   --mount flags dropped, and run with /bin/sh in the copy, as Docker would,
   with two changes: `--release` is dropped and `target/release/` becomes
   `target/debug/`, and /out is a folder of this run. The binaries it leaves
   in /out must then answer --version.

Why debug: the release build takes several times as long on CI's two cores.
Why a build at all, when `cargo test --workspace` has built both binaries
already: the tests build them with the features their dev-dependencies turn
on (tokio's test-util, for one), the Dockerfile's `cargo build -p ... -p ...`
without; that changes tokio's and syn's features and so nearly every crate's
hash, and nothing of the test build can be reused. So this is a second build
of the two binaries alone, into its own target folder, deleted afterwards:
about 3 minutes of CPU time (measured: 2 min 37 s user, 27 s system), so a
minute or two of CI's two cores when nothing else runs; the release build's
optimisation would cost several times that.
What it cannot catch: what differs only in release mode (optimisation,
debug_assertions), the base images, and the final stage (apt-get, useradd).

MODELRELAY_SKIP_DOCKER_BUILD=1 skips it on purpose; the skip is recorded in
$MODELRELAY_SKIP_FILE (scripts/test lists it, and CI fails on it).
"""

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DOCKERFILE = ROOT / "extras" / "docker" / "Dockerfile"
SKIP_VARIABLE = "MODELRELAY_SKIP_DOCKER_BUILD"
BINARIES = ("modelrelay-server", "modelrelay-worker")
# Under the target folder: ignored by git and by .dockerignore.
WORK = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")).resolve() / "dockerfile-build"


class Failed(Exception):
    """The check failed; the message says why."""


def ignore_patterns():
    """.dockerignore's patterns, in order: (regex, excludes) pairs."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip().lstrip("/"))
        patterns.append((re.compile(glob_to_regex(pattern)), excludes))
    return patterns


def glob_to_regex(pattern):
    """Docker's pattern syntax (Go's filepath.Match plus `**`) as a regex."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i:]:
            end = pattern.index("]", i)
            regex, i = regex + pattern[i:end + 1].replace("[!", "[^"), end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return regex + r"\Z"


def is_ignored(path, patterns):
    """Whether .dockerignore leaves `path` out: the last pattern matching it,
    or one of its parent folders, decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for regex, excludes in patterns:
        if any(regex.match(candidate) for candidate in candidates):
            ignored = excludes
    return ignored


def build_context():
    """The files Docker sends as the build context, relative to the root."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    patterns = ignore_patterns()
    return sorted(f for f in listed if f and (ROOT / f).is_file() and not is_ignored(f, patterns))


def instructions():
    """The Dockerfile's instructions as (keyword, text) pairs, continuation
    lines joined and comment lines inside them dropped."""
    result, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current:
            keyword, _, text = current.partition(" ")
            result.append((keyword.upper(), text.strip()))
        current = ""
    return result


def check_copy_sources(context):
    """Every COPY or ADD source without --from exists in the context."""
    for keyword, text in instructions():
        words = shlex.split(text)
        if keyword not in ("COPY", "ADD") or any(w.startswith("--from") for w in words):
            continue
        for source in [w for w in words if not w.startswith("--")][:-1]:
            source = os.path.normpath(source.lstrip("/"))
            found = source == "." or any(
                f == source or f.startswith(source + "/") or fnmatch.fnmatchcase(f, source) for f in context)
            if not found:
                raise Failed(f"the Dockerfile copies {source}, which is not in the build context")


def build_command(out):
    """The Dockerfile's `cargo build` RUN, as it runs here (see the module doc)."""
    runs = [text for keyword, text in instructions() if keyword == "RUN" and "cargo build" in text]
    if len(runs) != 1:
        raise Failed(f"expected one RUN with `cargo build` in the Dockerfile, found {len(runs)}")
    command = re.sub(r"^(--\S+\s+)+", "", runs[0])
    changes = [(r" --release\b", ""), (r"\btarget/release/", "target/debug/"), (r"(?<![\w/.])/out\b", str(out))]
    for pattern, replacement in changes:
        command, count = re.subn(pattern, replacement, command)
        if count == 0:
            raise Failed(f"the Dockerfile's build step no longer has {pattern!r}: update {Path(__file__).name}")
    return command


def run_build(context):
    """Copies the context to a fresh folder and runs the build step there."""
    shutil.rmtree(WORK, ignore_errors=True)
    source, out = WORK / "src", WORK / "out"
    for name in context:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    command = build_command(out)
    env = {k: v for k, v in os.environ.items() if k not in ("CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR")}
    # As [profile.release] has it, so that `strip --strip-debug` has line tables to strip.
    env.update(CARGO_INCREMENTAL="0", CARGO_PROFILE_DEV_DEBUG="line-tables-only")
    print(f"in a copy of the build context ({len(context)} files): {command}", flush=True)
    started = time.monotonic()
    subprocess.run(["/bin/sh", "-c", command], cwd=source, env=env, check=True)
    print(f"built in {time.monotonic() - started:.0f} s", flush=True)
    for binary in BINARIES:
        version = subprocess.run([str(out / binary), "--version"], check=True, capture_output=True, text=True)
        print(f"ok    {binary} --version: {version.stdout.strip()}")


def main():
    if os.environ.get(SKIP_VARIABLE) == "1":
        why = f"Dockerfile build step outside Docker: {SKIP_VARIABLE}=1 (unset it to run it)"
        print(f"SKIPPED {why}")
        if os.environ.get("MODELRELAY_SKIP_FILE"):
            with open(os.environ["MODELRELAY_SKIP_FILE"], "a") as skips:
                skips.write(why + "\n")
        return 0
    try:
        context = build_context()
        check_copy_sources(context)
        print(f"ok    every COPY source is in the build context ({len(context)} files)")
        run_build(context)
    except (Failed, subprocess.CalledProcessError) as error:
        print(f"FAIL  the Dockerfile's build step outside Docker: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
