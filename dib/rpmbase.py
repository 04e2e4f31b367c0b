"""Base trees of RPM distributions: dnf (yum-minimal) and zypper (zypper-minimal).

Run by those elements' root.d hooks as ``"$_DIB_PYTHON" -m dib.rpmbase dnf|zypper``.
The build machine's own dnf or zypper installs into the image's root
(``--installroot`` / ``--root``) from the repositories the environment names, as
diskimage-builder's yum-minimal and zypper-minimal do:

- fedora and centos (dnf): ``DIB_DISTRIBUTION_MIRROR`` (fedora: the directory holding
  ``releases/`` and ``updates/``; centos: the one holding ``<N>-stream/``), or
  ``DIB_YUM_MINIMAL_BOOTSTRAP_REPOS``, a directory of ``.repo`` files used as they are.
  ``$releasever`` is ``DIB_RELEASE`` up to its first ``-`` (``9-stream`` -> ``9``).
- opensuse (zypper): ``DIB_OPENSUSE_MIRROR`` (the directory holding ``distribution/``
  and ``update/``), or ``ZYPPER_REPOS`` (``name=>uri`` words, as upstream).

The repository configuration dib used is written into the image (``/etc/yum.repos.d/
dib-<distro>.repo``, ``/etc/zypp/repos.d/<name>.repo``), so the image's own package
manager (``install-packages`` in the chroot phases) reads the same repositories.
No repository is built in: without one of those variables the build stops at once.
The tools' caches are under the image cache (``dnf/``, ``zypper/``); ``--offline``
(DIB_OFFLINE) builds from them only (``dnf --cacheonly``, ``zypper --no-refresh``).

Debian's rpm keeps its database under ``~/.rpmdb``; every rpm, dnf and zypper call here
runs with ``HOME`` set to a directory whose ``.rpmmacros`` puts it where the image's own
rpm looks (inside the root: ``/usr/lib/sysimage/rpm``, with ``/var/lib/rpm`` a link to
it, for Fedora 36 and later, CentOS Stream 10 and later and openSUSE; ``/var/lib/rpm``
for older releases; ``DIB_RPM_DBPATH`` overrides), the build machine's home untouched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple

from dib import chroot, failure, spawn
from dib.errors import CommandFailed, ConfigError, DibError
from dib.run import run

LOG = logging.getLogger("dib")
RPM_DBPATH = "/var/lib/rpm"
SYSIMAGE_DBPATH = "/usr/lib/sysimage/rpm"  # where newer releases' own rpm looks
RPM_QUERY_TIMEOUT = 300.0
RPM_LIST_LIMIT = 16 << 20  # bytes of `rpm -qa` output: tens of thousands of packages
RPM_ARCHES = {"amd64": "x86_64", "arm64": "aarch64", "ppc64el": "ppc64le"}
# The first transaction lays out the tree (filesystem owns /bin -> usr/bin and the
# like, so nothing else may create those first); the release packages carry the
# distribution's version and keys.
DNF_BOOTSTRAP = {
    "fedora": ("basesystem", "filesystem", "setup", "fedora-release", "fedora-repos",
               "fedora-gpg-keys"),
    "centos": ("basesystem", "filesystem", "setup", "centos-stream-release",
               "centos-stream-repos", "centos-gpg-keys"),
}
# The second: the package manager the image keeps, then what diskimage-builder's
# yum-minimal adds before any element's package-installs runs.
DNF_BASE = ("dnf", "dnf-plugins-core", "curl", "coreutils", "glibc-minimal-langpack",
            "glibc-langpack-en", "systemd", "systemd-udev", "passwd", "findutils", "sudo",
            "util-linux")
ZYPPER_BOOTSTRAP = ("filesystem",)
ZYPPER_BASE = ("openSUSE-release", "zypper", "sudo", "python3")
DEFAULT_OPENSUSE_PATTERNS = "patterns-base-minimal_base"


class RepoConfigError(ConfigError):
    """No repository to build from, or one that cannot be read."""


@dataclass(frozen=True)
class Repo:
    name: str
    url: str


def rpm_arch(arch: str) -> str:
    """dib's (Debian) architecture name as RPM distributions spell it."""
    return RPM_ARCHES.get(arch, arch)


def releasever(release: str) -> str:
    """dnf's ``$releasever`` for a DIB_RELEASE: ``43`` -> ``43``, ``9-stream`` -> ``9``."""
    return release.split("-", 1)[0]


def rpm_dbpath(distro: str, release: str, env: Mapping[str, str]) -> str:
    """Where the image's own rpm keeps its database (see the module's note)."""
    given = env.get("DIB_RPM_DBPATH", "").strip()
    if given:
        return given
    major = releasever(release)
    if distro == "opensuse":
        return SYSIMAGE_DBPATH
    if distro == "fedora":
        return RPM_DBPATH if major.isdigit() and int(major) < 36 else SYSIMAGE_DBPATH
    if distro == "centos":
        return RPM_DBPATH if major.isdigit() and int(major) < 10 else SYSIMAGE_DBPATH
    return RPM_DBPATH


def init_rpmdb(root: Path, dbpath: str) -> None:
    """The database directory in ``root``; with the sysimage path, /var/lib/rpm links to it
    as on the distributions that moved it."""
    (root / dbpath.lstrip("/")).mkdir(parents=True, exist_ok=True)
    if dbpath == SYSIMAGE_DBPATH:
        legacy = root / RPM_DBPATH.lstrip("/")
        legacy.parent.mkdir(parents=True, exist_ok=True)
        if not legacy.is_symlink() and not legacy.exists():
            legacy.symlink_to("../../usr/lib/sysimage/rpm")


def _mirror(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip().rstrip("/")


def dnf_repos(distro: str, release: str, env: Mapping[str, str]) -> List[Repo]:
    """The repositories of a dnf distribution under DIB_DISTRIBUTION_MIRROR; ``$releasever``
    and ``$basearch`` are left for dnf to fill in."""
    mirror = _mirror(env, "DIB_DISTRIBUTION_MIRROR")
    if not mirror:
        raise RepoConfigError(
            f"yum-minimal: no repository for {distro} {release}: set DIB_DISTRIBUTION_MIRROR "
            f"(a {distro} mirror) or DIB_YUM_MINIMAL_BOOTSTRAP_REPOS (a directory of .repo "
            "files); dib has no default repository"
        )
    if distro == "fedora":
        return [
            Repo("fedora", f"{mirror}/releases/$releasever/Everything/$basearch/os/"),
            Repo("updates", f"{mirror}/updates/$releasever/Everything/$basearch/"),
        ]
    if distro == "centos":
        stream = "$releasever-stream" if "stream" in release else "$releasever"
        return [
            Repo("baseos", f"{mirror}/{stream}/BaseOS/$basearch/os/"),
            Repo("appstream", f"{mirror}/{stream}/AppStream/$basearch/os/"),
        ]
    raise RepoConfigError(f"yum-minimal: DISTRO_NAME '{distro}' is not fedora or centos")


def repo_file_text(distro: str, repos: Sequence[Repo], gpgcheck: bool) -> str:
    """A yum/dnf ``.repo`` file for ``repos`` (ids prefixed ``dib-``)."""
    blocks = []
    for repo in repos:
        blocks.append(
            f"[dib-{repo.name}]\n"
            f"name=dib: {distro} $releasever - {repo.name}\n"
            f"baseurl={repo.url}\n"
            "enabled=1\n"
            f"gpgcheck={1 if gpgcheck else 0}\n"
            "skip_if_unavailable=False\n"
        )
    return "\n".join(blocks)


def zypper_repos(release: str, env: Mapping[str, str]) -> List[Repo]:
    """openSUSE's repositories: ZYPPER_REPOS (``name=>uri`` words) as given, else the
    release's oss and update trees under DIB_OPENSUSE_MIRROR."""
    given = env.get("ZYPPER_REPOS", "").split()
    if given:
        repos = []
        for word in given:
            name, sep, url = word.partition("=>")
            if not sep or not name or not url:
                raise RepoConfigError(f"zypper-minimal: ZYPPER_REPOS entry '{word}' is not "
                                      "NAME=>URI")
            repos.append(Repo(name, url))
        return repos
    mirror = _mirror(env, "DIB_OPENSUSE_MIRROR")
    if not mirror:
        raise RepoConfigError(
            f"zypper-minimal: no repository for openSUSE {release}: set DIB_OPENSUSE_MIRROR "
            "(an openSUSE mirror) or ZYPPER_REPOS; dib has no default repository"
        )
    if release == "tumbleweed":
        return [Repo("oss", f"{mirror}/tumbleweed/repo/oss/"),
                Repo("update", f"{mirror}/update/tumbleweed/")]
    if release.startswith("15."):
        return [Repo("oss", f"{mirror}/distribution/leap/{release}/repo/oss/"),
                Repo("update", f"{mirror}/update/leap/{release}/oss/")]
    raise RepoConfigError(f"zypper-minimal: unsupported openSUSE release '{release}' "
                          "(15.N or tumbleweed)")


def flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    return value not in ("0", "false", "no", "off")


def words(env: Mapping[str, str], name: str) -> Tuple[str, ...]:
    return tuple(env.get(name, "").split())


@contextlib.contextmanager
def rpm_home(dbpath: str = RPM_DBPATH) -> Iterator[str]:
    """A HOME whose ``.rpmmacros`` keeps the rpm database at ``dbpath`` in the root."""
    home = tempfile.mkdtemp(prefix="dib-rpm-home.")
    try:
        Path(home, ".rpmmacros").write_text(f"%_dbpath {dbpath}\n")
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def tool_env(env: Mapping[str, str], home: str) -> dict:
    result = {k: v for k, v in env.items() if not k.startswith("BASH_FUNC_")}
    result.update({"HOME": home, "LC_ALL": "C.UTF-8"})
    return result


def dnf_command(
    root: Path,
    conf: Path,
    reposdir: Path,
    cachedir: Path,
    release: str,
    arch: str,
    packages: Sequence[str],
    offline: bool = False,
) -> List[str]:
    """The build machine's dnf installing ``packages`` into ``root`` (``offline``: from its
    cache only, as ``--offline`` asks)."""
    return [
        "dnf", "-y", *(["--cacheonly"] if offline else []), f"--config={conf}",
        f"--installroot={root}",
        f"--releasever={releasever(release)}", f"--forcearch={rpm_arch(arch)}",
        "--noplugins", f"--setopt=reposdir={reposdir}", f"--setopt=cachedir={cachedir}",
        "--setopt=keepcache=True", "--setopt=install_weak_deps=False",
        "--setopt=tsflags=nodocs", "install", *packages,
    ]


def zypper_base(root: Path, cachedir: Path, gpgcheck: bool, offline: bool = False) -> List[str]:
    cmd = ["zypper", "--non-interactive", "--gpg-auto-import-keys", "--root", str(root),
           "--cache-dir", str(cachedir)]
    if offline:
        cmd.append("--no-refresh")
    if not gpgcheck:
        cmd.append("--no-gpg-checks")
    return cmd


def zypper_addrepo(base: Sequence[str], repo: Repo, gpgcheck: bool) -> List[str]:
    cmd = [*base, "addrepo", "--keep-packages"]
    if not gpgcheck:
        cmd.append("--no-gpgcheck")
    return [*cmd, "--name", f"dib: {repo.name}", repo.url, repo.name]


def zypper_install(base: Sequence[str], packages: Sequence[str]) -> List[str]:
    return [*base, "install", "--no-recommends", *packages]


def _require_tool(tool: str) -> None:
    if shutil.which(tool) is None:
        raise failure.note(DibError(f"{tool} not available"), kind="config")


def _run(cmd: Sequence[str], env: Mapping[str, str], what: str) -> None:
    try:
        run(cmd, tag=what, env=env)
    except CommandFailed as err:
        raise failure.note(
            DibError(f"{what} failed with exit code {err.returncode}"),
            kind="packages", status=err.returncode, command=" ".join(cmd),
            error=failure.pick_error_line(err.tail),
        ) from None


def finish_tree(root: Path) -> None:
    """As diskimage-builder's minimal elements end their root.d: a blank resolv.conf (the
    chroot phases bring their own), a UTF-8 locale, UTC, and no stray ``.rpmnew``."""
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    resolv = etc / "resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("# This file intentionally left blank\n")
    (etc / "locale.conf").write_text('LANG="en_US.UTF-8"\n')
    localtime = etc / "localtime"
    if localtime.is_symlink() or localtime.exists():
        localtime.unlink()
    localtime.symlink_to("/usr/share/zoneinfo/UTC")
    for top, _, files in os.walk(root):
        for name in files:
            if name.endswith(".rpmnew"):
                path = Path(top, name)
                os.replace(path, path.with_name(name[: -len(".rpmnew")]))


def _set_aside_release_repos(root: Path, keep: str) -> None:
    """The release packages' own .repo files point at the distribution's public mirrors;
    with a mirror given they are kept as ``NAME.repo.dib-disabled`` so the image's dnf
    uses the same repositories as the build (cleanup.d does not put them back: the
    image is what the build used)."""
    for path in sorted((root / "etc/yum.repos.d").glob("*.repo")):
        if path.name != keep:
            os.replace(path, path.with_name(path.name + ".dib-disabled"))


def build_dnf(env: Mapping[str, str]) -> None:
    _require_tool("dnf")
    distro = env.get("DISTRO_NAME", "")
    release = env.get("DIB_RELEASE", "")
    root = Path(env["TARGET_ROOT"])
    arch = env.get("ARCH", "amd64")
    gpgcheck = flag(env, "DIB_YUM_MINIMAL_GPGCHECK", False)
    repo_name = f"dib-{distro}.repo"
    given = env.get("DIB_YUM_MINIMAL_BOOTSTRAP_REPOS", "").strip()
    if distro not in DNF_BOOTSTRAP:
        raise RepoConfigError(f"yum-minimal: DISTRO_NAME '{distro}' is not fedora or centos")
    cache = Path(env["DIB_IMAGE_CACHE"]) / "dnf" / f"{distro}-{release}-{rpm_arch(arch)}"
    cache.mkdir(parents=True, exist_ok=True)
    dbpath = rpm_dbpath(distro, release, env)
    with tempfile.TemporaryDirectory(prefix="dib-dnf.") as tmp, rpm_home(dbpath) as home:
        reposdir = Path(tmp, "repos")
        reposdir.mkdir()
        if given:
            files = sorted(Path(given).glob("*.repo"))
            if not files:
                raise RepoConfigError(f"DIB_YUM_MINIMAL_BOOTSTRAP_REPOS: no .repo file in "
                                      f"{given}")
            for path in files:
                shutil.copyfile(path, reposdir / path.name)
        else:
            text = repo_file_text(distro, dnf_repos(distro, release, env), gpgcheck)
            (reposdir / repo_name).write_text(text)
        conf = Path(tmp, "dnf.conf")
        conf.write_text(f"[main]\ngpgcheck={1 if gpgcheck else 0}\nbest=True\n")
        tools = tool_env(env, home)
        init_rpmdb(root, dbpath)
        _run(["rpm", "--root", str(root), "--dbpath", dbpath, "--initdb"], tools,
             "rpm --initdb")
        bootstrap = (*words(env, "DIB_YUM_MINIMAL_BOOTSTRAP_PACKAGES"), *DNF_BOOTSTRAP[distro])
        base = (*DNF_BASE, *words(env, "DIB_YUM_MINIMAL_EXTRA_PACKAGES"))
        with chroot.chroot_environment(root):
            for packages in (bootstrap, base):
                _run(dnf_command(root, conf, reposdir, cache, release, arch, packages,
                                 offline=bool(env.get("DIB_OFFLINE"))),
                     tools, "dnf --installroot")
        repos_d = root / "etc/yum.repos.d"
        repos_d.mkdir(parents=True, exist_ok=True)
        for path in sorted(reposdir.iterdir()):
            shutil.copyfile(path, repos_d / path.name)
            LOG.info("image repository configuration: /etc/yum.repos.d/%s", path.name)
        if not given:
            _set_aside_release_repos(root, repo_name)
    finish_tree(root)


def build_zypper(env: Mapping[str, str]) -> None:
    _require_tool("zypper")
    release = env.get("DIB_RELEASE", "")
    root = Path(env["TARGET_ROOT"])
    gpgcheck = flag(env, "DIB_ZYPPER_MINIMAL_GPGCHECK", True)
    repos = zypper_repos(release, env)
    cache = Path(env["DIB_IMAGE_CACHE"]) / "zypper" / f"opensuse-{release}"
    cache.mkdir(parents=True, exist_ok=True)
    patterns = words(env, "DIB_OPENSUSE_PATTERNS") or (DEFAULT_OPENSUSE_PATTERNS,)
    dbpath = rpm_dbpath("opensuse", release, env)
    with rpm_home(dbpath) as home:
        tools = tool_env(env, home)
        init_rpmdb(root, dbpath)
        _run(["rpm", "--root", str(root), "--dbpath", dbpath, "--initdb"], tools,
             "rpm --initdb")
        offline = bool(env.get("DIB_OFFLINE"))
        base = zypper_base(root, cache, gpgcheck, offline)
        for repo in repos:
            _run(zypper_addrepo(base, repo, gpgcheck), tools, "zypper addrepo")
        if not offline:
            _run([*base, "refresh"], tools, "zypper refresh")
        with chroot.chroot_environment(root):
            _run(zypper_install(base, ZYPPER_BOOTSTRAP), tools, "zypper install")
            _run(zypper_install(base, (*patterns, *ZYPPER_BASE)), tools, "zypper install")
    finish_tree(root)


def installed_rpms(root: Path) -> List[str]:
    """'name version-release arch' of every package in ``root``'s rpm database, sorted;
    empty when the root has none or rpm is not on this machine (for the ``.packages``
    manifest beside the image, as dpkg's status file gives for Debian images)."""
    if shutil.which("rpm") is None:
        return []
    dbpath = next((p for p in (SYSIMAGE_DBPATH, RPM_DBPATH)
                   if (root / p.lstrip("/")).is_dir() and any((root / p.lstrip("/")).iterdir())),
                  None)
    if dbpath is None:
        return []
    with rpm_home(dbpath) as home:
        found = spawn.run(
            ["rpm", "--root", str(root), "--dbpath", dbpath, "-qa", "--qf",
             "%{NAME} %{VERSION}-%{RELEASE} %{ARCH}\\n"],
            timeout=RPM_QUERY_TIMEOUT, limit=RPM_LIST_LIMIT, whole_output=True,
            errors_apart=True, env=spawn.child_env({"HOME": home}),
        )
    if not found.ok:
        LOG.warning("rpm -qa in %s failed: %s", root, _rpm_problem(found))
        return []
    return sorted(line.strip() for line in found.text.splitlines() if line.strip())


def _rpm_problem(found: spawn.Result) -> str:
    if found.timed_out:
        return f"no answer within {RPM_QUERY_TIMEOUT:.0f} s"
    if found.overflowed:
        return f"more than {RPM_LIST_LIMIT >> 20} MiB of package list"
    return found.errors.strip()[-300:] or f"exit status {found.returncode}"


BUILDERS = {"dnf": build_dnf, "zypper": build_zypper}


def main(argv: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    argv = sys.argv[1:] if argv is None else list(argv)
    env = os.environ if env is None else env
    if len(argv) != 1 or argv[0] not in BUILDERS:
        print("usage: python -m dib.rpmbase dnf|zypper", file=sys.stderr)
        return 2
    try:
        BUILDERS[argv[0]](env)
    except DibError as err:
        print(err, file=sys.stdout, flush=True)
        failure.write_hook_detail(env, failure.describe(err))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
