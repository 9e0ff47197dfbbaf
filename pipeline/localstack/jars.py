"""The jar cache of the local stack: Kafka, Kafka Connect and Debezium plugins, Apicurio
Registry and its converter, from Maven Central.

``deploy/local/pom.xml`` (with its module ``apicurio-converter/pom.xml``) names the versions;
``mvn package`` copies the jars into ``<cache_dir>/<hash of the poms>/`` (``libs/`` for the
broker and worker classpath, ``plugins/`` for Connect's ``plugin.path``,
``apicurio-registry/`` for the registry's Quarkus distribution). A folder is used only once it
holds a ``.complete`` marker, so an interrupted fetch is redone, and a changed pom fetches
afresh.
"""

from __future__ import annotations

import glob
import hashlib
import re
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
POM = REPO_ROOT / "deploy" / "local" / "pom.xml"
MODULE_POMS = ("apicurio-converter/pom.xml",)
"""Module poms next to :data:`POM` (part of the cache hash)."""
MIN_JAVA = 17
MIN_REGISTRY_JAVA = 21
"""Apicurio Registry 3.3 is compiled for Java 21 (class file version 65)."""

APICURIO_PLUGIN = "apicurio-converter"
_CONVERTER_SERVICE = "META-INF/services/org.apache.kafka.connect.storage.Converter"
_APICURIO_CONVERTERS = ("io.apicurio.registry.utils.converter.AvroConverter",)


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
    def registry_jar(self) -> Path:
        """``quarkus-run.jar`` of the Apicurio Registry distribution."""
        return self.root / "apicurio-registry" / "quarkus-run.jar"

    @property
    def complete(self) -> bool:
        """True when a previous fetch finished."""
        return (self.root / ".complete").exists()


def cache_for(cache_dir: Path, pom: Path = POM) -> JarCache:
    """The cache folder for the current content of ``pom`` and its module poms under ``cache_dir``."""
    h = hashlib.sha256(pom.read_bytes())
    for module in MODULE_POMS:
        path = pom.parent / module
        if path.exists():
            h.update(path.read_bytes())
    return JarCache(cache_dir.expanduser().resolve() / h.hexdigest()[:16])


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


def _java_major(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)', out)
    return int(match.group(1)) if match else 0


def registry_java_binary() -> str:
    """Path of a ``java`` 21+ for Apicurio Registry: ``java`` on PATH if new enough, else the
    newest JDK under ``/usr/lib/jvm``.

    Raises ToolMissingError when there is none.
    """
    on_path = shutil.which("java")
    candidates = ([on_path] if on_path else []) + sorted(glob.glob("/usr/lib/jvm/*/bin/java"), reverse=True)
    for java in candidates:
        if _java_major(java) >= MIN_REGISTRY_JAVA:
            return java
    raise ToolMissingError(
        f"Apicurio Registry needs java {MIN_REGISTRY_JAVA}+: install one (apt-get install -y openjdk-21-jdk-headless)"
    )


def add_converter_service_manifest(plugin_dir: Path) -> Path:
    """Write ``cdc-apicurio-services.jar`` into ``plugin_dir`` declaring Apicurio's converters
    as ``org.apache.kafka.connect.storage.Converter`` services.

    The Connect worker runs with ``plugin.discovery=service_load``, which only finds plugins
    with a ServiceLoader manifest (Kafka docs, "plugin.discovery"); the Apicurio converter jar
    has none. Returns the jar's path.
    """
    path = plugin_dir / "cdc-apicurio-services.jar"
    with zipfile.ZipFile(path, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
        jar.writestr(_CONVERTER_SERVICE, "\n".join(_APICURIO_CONVERTERS) + "\n")
    return path


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
    add_converter_service_manifest(cache.plugins / APICURIO_PLUGIN)
    (cache.root / ".complete").write_text("ok\n", encoding="ascii")
    return cache, True
