"""The jar cache of the local stack: Kafka, Kafka Connect and Debezium plugins from Maven Central.

``deploy/local/pom.xml`` names the versions; ``mvn package`` copies the jars into
``<cache_dir>/<hash of the pom>/`` (``libs/`` for the broker and worker classpath,
``plugins/`` for Connect's ``plugin.path``). A folder is used only once it holds a
``.complete`` marker, so an interrupted fetch is redone, and a changed pom fetches afresh.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
POM = REPO_ROOT / "deploy" / "local" / "pom.xml"
MIN_JAVA = 17


class ToolMissingError(RuntimeError):
    """A program the local stack needs (java, mvn, pg_ctl) is missing; the message says how to install it."""


@dataclass(frozen=True)
class JarCache:
    """Resolved jar folders: ``libs`` (classpath) and ``plugins`` (Connect plugin.path)."""

    root: Path

    @property
    def libs(self) -> Path:
        """Folder of the broker/worker jars."""
        return self.root / "libs"

    @property
    def plugins(self) -> Path:
        """Folder holding one sub-folder per Connect plugin."""
        return self.root / "plugins"

    @property
    def classpath(self) -> str:
        """Java classpath wildcard for ``libs``."""
        return f"{self.libs}/*"

    @property
    def complete(self) -> bool:
        """True when a previous fetch finished."""
        return (self.root / ".complete").exists()


def cache_for(cache_dir: Path, pom: Path = POM) -> JarCache:
    """The cache folder for ``pom``'s current content under ``cache_dir``."""
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    return JarCache(cache_dir.expanduser().resolve() / digest)


def java_binary() -> str:
    """Path of a ``java`` of version 17 or newer.

    Raises ToolMissingError when none is on PATH or it is older.
    """
    java = shutil.which("java")
    if java is None:
        raise ToolMissingError("java not found: install a JDK 17+ (apt-get install -y openjdk-17-jdk-headless)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)', out)
    if match is None or int(match.group(1)) < MIN_JAVA:
        raise ToolMissingError(f"java {MIN_JAVA}+ is required, found: {out.splitlines()[0] if out else '?'}")
    return java


def ensure_jars(cache_dir: Path, pom: Path = POM) -> tuple[JarCache, bool]:
    """Fetch the jars unless cached. Returns the cache and whether it was fetched now.

    Raises ToolMissingError when Maven is missing and RuntimeError when the fetch fails
    (with Maven's last output lines).
    """
    if not pom.exists():
        raise ToolMissingError(f"{pom} not found: run the local stack from a checkout of cdc-pipeline")
    cache = cache_for(cache_dir, pom)
    if cache.complete:
        return cache, False
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ToolMissingError("mvn not found: install Maven (apt-get install -y maven)")
    if cache.root.exists():
        shutil.rmtree(cache.root)
    cache.root.mkdir(parents=True)
    proc = subprocess.run(
        [mvn, "-B", "-q", "-f", str(pom), f"-Dcache.dir={cache.root}", "package"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise RuntimeError(f"mvn could not fetch the local stack jars:\n{tail}")
    shutil.rmtree(cache.root / "build", ignore_errors=True)
    (cache.root / ".complete").write_text("ok\n", encoding="ascii")
    return cache, True
