"""A real OpenLDAP ``slapd`` on loopback, loaded with a small test directory.

The launcher writes a minimal ``slapd.conf``, loads the directory with
``slapadd`` and runs ``slapd -d 0`` in the foreground under ``Popen`` so the
caller owns the process. With ``tls=True`` it also creates a test CA and a
server certificate (for 127.0.0.1 and localhost), enabling StartTLS on the
``ldap://`` port and an ``ldaps://`` port.

It does not import pytest: benchmarks and scripts can use it too.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from fusion_testing.services import ServiceStartError, free_port, wait_until_ready

__all__ = [
    "SUFFIX",
    "DirectoryUser",
    "SlapdServer",
    "escape_dn_value",
    "ssha",
    "test_users",
]

SUFFIX = "dc=example,dc=org"
_SCHEMA_DIR = Path("/etc/ldap/schema")
_MODULE_DIRS = (Path("/usr/lib/ldap"), Path("/usr/lib/openldap"), Path("/usr/libexec/openldap"))


@dataclass(frozen=True)
class DirectoryUser:
    """A person of the test directory and the groups it belongs to."""

    uid: str
    password: str
    # groupOfNames groups (also written to memberOf)
    groups: tuple[str, ...] = ()
    # groupOfUniqueNames groups (also written to memberOf)
    unique_groups: tuple[str, ...] = ()
    # posixGroup groups, matched by memberUid only (never in memberOf)
    posix_groups: tuple[str, ...] = ()
    mail: str = field(default="")

    @property
    def dn(self) -> str:
        return f"uid={escape_dn_value(self.uid)},ou=people,{SUFFIX}"


def test_users() -> list[DirectoryUser]:
    """The people of the test directory."""
    return [
        DirectoryUser("alice", "alice-secret", groups=("analysts", "admins")),
        DirectoryUser("bob", "bob-secret", groups=("analysts",), posix_groups=("operators",)),
        DirectoryUser("carol", "carol-secret", unique_groups=("responders",)),
        DirectoryUser("dave", "dave-secret"),
        # A uid that needs DN escaping (comma, plus, quote) for direct bind.
        DirectoryUser('smith, j+r"x', "smith-secret", groups=("analysts",)),
    ]


def escape_dn_value(value: str) -> str:
    """RFC 4514 escaping, written here so the launcher does not need ldap3."""
    out = []
    for index, char in enumerate(value):
        if char in ',+"\\<>;=' or (char == "#" and index == 0):
            out.append("\\" + char)
        elif char == " " and index in (0, len(value) - 1):
            out.append("\\ ")
        else:
            out.append(char)
    return "".join(out)


def ssha(password: str) -> str:
    """``{SSHA}`` hash as slapd stores it."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt, usedforsecurity=False).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


class SlapdServer:
    """One slapd process with the test directory; ``start()`` / ``stop()`` repeatable."""

    admin_dn = f"cn=admin,{SUFFIX}"
    service_dn = f"cn=reader,ou=services,{SUFFIX}"
    people_base = f"ou=people,{SUFFIX}"
    groups_base = f"ou=groups,{SUFFIX}"

    def __init__(
        self,
        slapd: Path,
        slapadd: Path,
        workdir: Path,
        *,
        tls: bool = False,
        users: list[DirectoryUser] | None = None,
    ) -> None:
        self.slapd = slapd
        self.slapadd = slapadd
        self.workdir = workdir
        self.tls = tls
        self.users = users if users is not None else test_users()
        self.admin_password = secrets.token_urlsafe(12)
        self.service_password = secrets.token_urlsafe(12)
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.ca_file: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._prepared = False

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        if self.tls_port is None:
            raise RuntimeError("this slapd was created without tls=True")
        return f"ldaps://127.0.0.1:{self.tls_port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def user(self, uid: str) -> DirectoryUser:
        return next(user for user in self.users if user.uid == uid)

    # -- files ---------------------------------------------------------------

    def _module_dir(self) -> Path:
        for candidate in _MODULE_DIRS:
            if (candidate / "back_mdb.so").exists() or (candidate / "back_mdb.la").exists():
                return candidate
        raise RuntimeError("slapd modules (back_mdb) not found: apt-get install -y slapd")

    def _write_config(self) -> Path:
        tls_lines = ""
        if self.tls:
            assert self.ca_file is not None
            tls_lines = (
                f"TLSCACertificateFile {self.ca_file}\n"
                f"TLSCertificateFile {self.workdir / 'server.pem'}\n"
                f"TLSCertificateKeyFile {self.workdir / 'server.key'}\n"
            )
        config = f"""\
include {_SCHEMA_DIR}/core.schema
include {_SCHEMA_DIR}/cosine.schema
include {_SCHEMA_DIR}/inetorgperson.schema
include {_SCHEMA_DIR}/nis.schema
pidfile {self.workdir}/slapd.pid
modulepath {self._module_dir()}
moduleload back_mdb
moduleload memberof
{tls_lines}
database mdb
maxsize 10485760
suffix "{SUFFIX}"
rootdn "{self.admin_dn}"
rootpw {ssha(self.admin_password)}
directory {self.workdir / "db"}
index objectClass eq
index uid,cn,member,uniqueMember,memberUid eq
overlay memberof
access to attrs=userPassword by self write by anonymous auth by * none
access to * by * read
"""
        path = self.workdir / "slapd.conf"
        path.write_text(config)
        return path

    def _ldif(self) -> str:
        entries = [
            f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\n"
            "dc: example\no: Example\n",
            f"dn: {self.people_base}\nobjectClass: organizationalUnit\nou: people\n",
            f"dn: {self.groups_base}\nobjectClass: organizationalUnit\nou: groups\n",
            f"dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n",
            f"dn: {self.service_dn}\nobjectClass: organizationalRole\n"
            f"objectClass: simpleSecurityObject\ncn: reader\n"
            f"userPassword: {ssha(self.service_password)}\n",
        ]
        names: dict[str, list[str]] = {}
        uniques: dict[str, list[str]] = {}
        posix: dict[str, list[str]] = {}
        for number, user in enumerate(self.users):
            member_of = [f"cn={g},{self.groups_base}" for g in user.groups + user.unique_groups]
            lines = [
                f"dn: {user.dn}",
                "objectClass: inetOrgPerson",
                _attr("uid", user.uid),
                _attr("cn", user.uid),
                _attr("sn", user.uid),
                f"mail: {user.mail or f'user{number}@example.org'}",
                f"userPassword: {ssha(user.password)}",
                *(f"memberOf: {dn}" for dn in member_of),
            ]
            entries.append("\n".join(lines) + "\n")
            for group in user.groups:
                names.setdefault(group, []).append(user.dn)
            for group in user.unique_groups:
                uniques.setdefault(group, []).append(user.dn)
            for group in user.posix_groups:
                posix.setdefault(group, []).append(user.uid)
        for group, members in names.items():
            entries.append(
                f"dn: cn={group},{self.groups_base}\nobjectClass: groupOfNames\ncn: {group}\n"
                + "".join(_attr("member", dn) + "\n" for dn in members)
            )
        for group, members in uniques.items():
            entries.append(
                f"dn: cn={group},{self.groups_base}\nobjectClass: groupOfUniqueNames\n"
                f"cn: {group}\n" + "".join(_attr("uniqueMember", dn) + "\n" for dn in members)
            )
        for gid, (group, members) in enumerate(posix.items(), start=5000):
            entries.append(
                f"dn: cn={group},{self.groups_base}\nobjectClass: posixGroup\ncn: {group}\n"
                f"gidNumber: {gid}\n" + "".join(_attr("memberUid", uid) + "\n" for uid in members)
            )
        return "\n".join(entries)

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "db").mkdir(exist_ok=True)
        if self.tls:
            # Imported here so a plain (no TLS) directory does not need cryptography.
            from fusion_testing.tls import make_tls_files

            self.ca_file = make_tls_files(self.workdir).ca_file
        config = self._write_config()
        ldif = self.workdir / "data.ldif"
        ldif.write_text(self._ldif())
        result = subprocess.run(
            [str(self.slapadd), "-q", "-f", str(config), "-l", str(ldif)],
            capture_output=True,
            check=False,
            timeout=30,
        )
        if result.returncode != 0:
            raise RuntimeError(f"slapadd failed: {result.stderr.decode(errors='replace')}")
        self._prepared = True

    # -- process -------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start slapd (on the same ports as before) and wait until it answers."""
        if self.running:
            return
        if not self._prepared:
            self._prepare()
        listeners = self.url + (f" {self.ldaps_url}" if self.tls else "")
        command = [str(self.slapd), "-f", str(self.workdir / "slapd.conf"), "-h", listeners]
        log_path = self.workdir / "slapd.log"
        # A file rather than a pipe: nobody drains a pipe during the tests.
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [*command, "-d", "0"],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "LC_ALL": "C"},
            )
        try:
            wait_until_ready(
                self._process,
                self._answers,
                name=f"slapd on {self.url}",
                timeout=timeout,
                output=lambda: log_path.read_text(errors="replace")[-2000:],
            )
        except ServiceStartError:
            self.stop()
            raise

    def _answers(self) -> bool:
        # An LDAPv3 anonymous simple bind (BER by hand, no ldap3 here); any
        # BindResponse means slapd is serving.
        request = bytes.fromhex("300c020101600702010304008000")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(request)
                answer = sock.recv(64)
        except OSError:
            return False
        return len(answer) > 7 and answer[0] == 0x30 and 0x61 in answer[:8]

    def stop(self) -> None:
        """Stop slapd (the directory stays on disk for the next start)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def __enter__(self) -> SlapdServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _attr(name: str, value: str) -> str:
    """One LDIF line, base64 when the value is not safe as plain text."""
    safe = value.isascii() and value.isprintable() and not value.startswith((" ", ":", "<"))
    if safe and not value.endswith(" "):
        return f"{name}: {value}"
    return f"{name}:: {base64.b64encode(value.encode()).decode()}"
