"""The operator's policy: what each principal may do through kqd beyond what it could do itself.

kqd's rule is that a caller gets, through kqd, exactly what it could observe by itself on the
daemon's host, plus only what this policy grants. The kernel decides the first part (kqd opens
and connects with the caller's own credentials, ``caller_access.py``); the policy restricts it
(filters, paths, destinations, quotas) and grants the second part (paths opened with the daemon's
rights, a local identity for TLS principals, root for a named few).

The file is TOML, read with the standard library's tomllib; ``kqd serve --policy FILE`` loads it
and reloads it on SIGHUP (a file that does not load leaves the previous policy in force), and
``kqd policy check FILE...`` checks it. Without a file, :meth:`Policy.default` applies: exactly
the ``[defaults]`` values shown here::

    version = 1                      # optional; the format's version

    [defaults]                       # every principal, unless a more specific table sets a key
    filters = ["READ", "WRITE", "VNODE", "PROC", "TIMER", "USER"]  # SIGNAL: never over the wire
    paths_denied = []                # Open refused below these, even if the caller may open them
    paths_allowed = []               # when not empty: Open only below these
    paths_granted = []               # opened with the daemon's rights, beyond the caller's
    connect = ["127.0.0.0/8", "::1/128"]  # OpenConnection destinations (see below)
    connect_unix = true              # OpenConnection to unix:/path (with the caller's rights)
    open_peer_fd = true              # OpenPeerFd (the kernel's ptrace rule, as the caller)

    [defaults.quotas]                # see kqd/daemon/quotas.py; each key can be set alone
    queues = 1024
    knotes = 100000
    descriptors = 1024
    streams = 64
    udata_bytes = 67108864
    timers = 1000
    min_timer_period_ms = 1
    changes_per_second = 200000

    [principal."uid:1000"]           # a Unix-socket caller with this uid
    [principal."gid:27"]             # any Unix-socket caller with this gid or supplementary group
    [principal."tls:alice"]          # a TLS client certificate's name
    uid = 1000                       # tls:/tcp: tables only: act as this local user
    gid = 1000                       # optional with uid; needed when uid has no passwd entry
    [principal."tcp:anonymous"]      # plain TCP (kqd serve --insecure-tcp, loopback only)
    [principal."gid:0"]
    privileged = true                # act as root: OpenPeerFd on any process, Open of any path
    [principal."uid:1000".quotas]    # a principal's quotas, key by key
    knotes = 500000

A principal table takes every ``[defaults]`` key, plus ``privileged`` (never in ``[defaults]``:
root for everyone is not a default; never for "tcp:anonymous": anyone who reaches the port would
be root) and, in "tls:" and "tcp:" tables, ``uid``/``gid``. Unknown keys, wrong types and
malformed values are errors, reported as ``FILE:LINE: KEY: what is wrong`` (:class:`PolicyError`),
never as a traceback.

**Resolution** (:meth:`Policy.for_principal`), key by key, the most specific level wins:

1. built-in defaults, then ``[defaults]``;
2. the "gid:N" tables of every group of a Unix-socket caller (its gid and supplementary groups,
   as the kernel reported them at connect). Several groups combine as the most generous: the
   highest quota, the union of filters, grants and destinations, true if any says true;
   ``paths_allowed`` is their union (empty in any of them: no restriction). Denials are the
   exception: ``paths_denied`` lists add up, since a denial is an operator's "never" that a
   second group should not quietly lift;
3. the principal's own table ("uid:N", "tls:NAME", "tcp:anonymous").

A key set at a more specific level replaces the inherited value whole (lists too: repeat the
entries to keep); ``quotas`` merge key by key. Group tables apply to Unix-socket callers only; a
TLS principal mapped to a uid gets its own table, not that user's group tables.

**Local identity** (``Rules.identity``): a Unix-socket caller is who the kernel says (uid, gid,
groups); a "tls:"/"tcp:" principal with ``uid`` is that user, with the primary gid and groups of
the user database (pwd, ``os.getgrouplist``) as of loading; ``privileged`` is root. A principal
without one (TLS or TCP, no ``uid``) can Open only under ``paths_granted``, and gets neither
OpenPeerFd nor Unix-socket OpenConnection. ``uid = 0`` must be written ``privileged = true``.

**Paths** are matched by whole components ("/var/log" covers "/var/log" and "/var/log/syslog",
never "/var/logs"), against the real path of the descriptor kqd opened (symlinks resolved, so a
link cannot lead out of a prefix). A prefix must be absolute, without "." or ".." components. A
denied prefix matches as written and as resolved when the policy is loaded (so
"/var/run/secrets" also covers "/run/secrets" where /var/run is a link to /run); a granted or
allowed prefix must be the real path already (an error otherwise), since following a link would
let whoever owns it widen the grant. ``Rules.path_decision`` decides, in this order:
denied → "deny"; granted → "granted"; ``paths_allowed`` not empty and not covering → "deny";
privileged → "granted"; no local identity → "deny"; else "caller" (open with the caller's rights).

**Destinations** in ``connect``: an address or network, with an optional port or port range:
"10.0.0.0/8", "192.0.2.7:443", "10.1.0.0/16:8000-8999", "::1/128:5432", "2001:db8::/32",
"[2001:db8::1]:443". IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) match as their IPv4 address.
Note that connect() to 0.0.0.0 or :: reaches this host: they match only rules that contain them.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import json
import os
import posixpath
import pwd
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kqd.core.constants import (
    KQ_FILTER_PROC,
    KQ_FILTER_READ,
    KQ_FILTER_TIMER,
    KQ_FILTER_USER,
    KQ_FILTER_VNODE,
    KQ_FILTER_WRITE,
)
from kqd.daemon.credentials import ROOT, Credentials
from kqd.daemon.quotas import LIMIT_NAMES, Limits

if TYPE_CHECKING:
    from kqd.daemon.identity import Principal

FORMAT_VERSION = 1
PathDecision = Literal["deny", "caller", "granted"]

#: The filters a policy may allow. SIGNAL is not here on purpose: its knotes report signals sent
#: to the daemon's own process, which no caller should observe or provoke.
WIRE_FILTERS: dict[str, int] = {
    "READ": KQ_FILTER_READ,
    "WRITE": KQ_FILTER_WRITE,
    "VNODE": KQ_FILTER_VNODE,
    "PROC": KQ_FILTER_PROC,
    "TIMER": KQ_FILTER_TIMER,
    "USER": KQ_FILTER_USER,
}
DEFAULT_CONNECT = ("127.0.0.0/8", "::1/128")
_MAX_ID = 2**32 - 2  # uid_t/gid_t; (uid_t)-1 means "no change" to the kernel
_MAX_QUOTA = 10**15

_RULE_KEYS = (
    "filters",
    "paths_denied",
    "paths_allowed",
    "paths_granted",
    "connect",
    "connect_unix",
    "open_peer_fd",
    "quotas",
)
_PATH_KEYS = ("paths_denied", "paths_allowed", "paths_granted")
_BOOL_KEYS = ("connect_unix", "open_peer_fd")
_PRINCIPAL_RE = re.compile(r"(uid|gid):(0|[1-9][0-9]*)|tls:(.+)|tcp:anonymous", re.DOTALL)


class PolicyError(Exception):
    """A policy that cannot be used. ``str()`` is one line: ``FILE:LINE: KEY: problem`` (LINE
    and KEY when known); the parts are in *source*, *line*, *key* and *problem*."""

    def __init__(
        self, source: str, problem: str, *, line: int | None = None, key: str | None = None
    ) -> None:
        where = f"{source}:{line}" if line is not None else source
        what = f"{key}: {problem}" if key else problem
        super().__init__(f"{where}: {what}")
        self.source, self.line, self.key, self.problem = source, line, key, problem


@dataclass(frozen=True)
class ConnectRule:
    """One ``connect`` entry: a network and an inclusive port range."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    low: int = 0
    high: int = 65535

    def __str__(self) -> str:
        if (self.low, self.high) == (0, 65535):
            return str(self.network)
        ports = str(self.low) if self.low == self.high else f"{self.low}-{self.high}"
        return f"{self.network}:{ports}"

    @classmethod
    def parse(cls, text: str) -> ConnectRule:
        """Parse ``NETWORK[:PORTS]`` (see the module docstring); ValueError says what is wrong."""
        network, ports = _split_destination(text.strip())
        try:
            net = ipaddress.ip_network(network, strict=True)
        except ValueError as exc:
            reason = str(exc)
            if "host bits set" in reason:
                loose = ipaddress.ip_network(network, strict=False)
                reason = f"it has host bits set (did you mean {loose}?)"
            raise ValueError(f"{text!r} is not an address or network: {reason}") from None
        if ports is None:
            return cls(net)
        low_text, _, high_text = ports.partition("-")
        high_text = high_text or low_text
        if not all(p.isascii() and p.isdigit() for p in (low_text, high_text)):
            raise ValueError(f"{text!r}: the port must be N or LOW-HIGH, not {ports!r}")
        low, high = int(low_text), int(high_text)
        if high > 65535 or low > high:
            raise ValueError(f"{text!r}: ports run from 0 to 65535, low to high")
        return cls(net, low, high)

    def matches(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
        return self.low <= port <= self.high and address in self.network


def _split_destination(text: str) -> tuple[str, str | None]:
    """Split ``NETWORK[:PORTS]`` into its parts, without guessing at bare IPv6 addresses."""
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: write [IPV6]:PORT or [IPV6/LEN]:PORT")
        return inside, rest[1:] if rest else None
    if "/" in text:  # the prefix length has no colon: a colon after it starts the ports
        address, _, tail = text.partition("/")
        length, colon, ports = tail.partition(":")
        return f"{address}/{length}", ports if colon else None
    if text.count(":") == 1:  # IPv4 with a port
        address, _, ports = text.partition(":")
        return address, ports
    return text, None  # IPv4, or a bare IPv6 address (no port: brackets for that)


@dataclass(frozen=True)
class Rules:
    """What one principal may do, every field resolved (see the module docstring).

    ``connect_unix`` and ``open_peer_fd`` are already false for a principal without a local
    identity; ``identity`` is None for those. ``tables`` names the policy tables that applied,
    least specific first, for logs.
    """

    principal: str
    tables: tuple[str, ...]
    filters: frozenset[int]
    paths_denied: frozenset[str]
    paths_allowed: frozenset[str]
    paths_granted: frozenset[str]
    connect: tuple[ConnectRule, ...]
    connect_unix: bool
    open_peer_fd: bool
    privileged: bool
    identity: Credentials | None
    quotas: Limits

    def filter_allowed(self, filter_value: int) -> bool:
        """May this principal register knotes of *filter_value* (a KQ_FILTER_* value)?"""
        return filter_value in self.filters

    def path_decision(self, real_path: str) -> PathDecision:
        """How to treat an Open of *real_path*, the resolved path of what was opened (from
        /proc/self/fd, so no symlinks): "deny", "caller" (as the caller: its rights decide) or
        "granted" (with the daemon's rights). A path that is not absolute and canonical is
        denied."""
        path = _canonical(real_path)
        if path is None or _under(path, self.paths_denied):
            return "deny"
        if _under(path, self.paths_granted):
            return "granted"
        if self.paths_allowed and not _under(path, self.paths_allowed):
            return "deny"
        if self.privileged:
            return "granted"
        return "deny" if self.identity is None else "caller"

    def may_grant(self, path: str) -> bool:
        """Could an Open of *path*, as the client wrote it, fall under ``paths_granted``? A
        first look only (the path is not resolved yet): ``path_decision`` on the real path of
        what was opened decides."""
        canonical = _canonical(posixpath.normpath(path))
        return canonical is not None and _under(canonical, self.paths_granted)

    def connect_allowed(self, ip: str, port: int) -> bool:
        """May this principal OpenConnection to *ip* (numeric, v4 or v6) and *port*?"""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)
        return any(
            rule.matches(address, port) or (mapped is not None and rule.matches(mapped, port))
            for rule in self.connect
        )


def _canonical(path: str) -> str | None:
    """*path* without a trailing slash; None unless it is absolute, with no empty, "." or
    ".." components (a real path never has them)."""
    if not path.startswith("/") or "\0" in path:
        return None
    if path != "/":
        path = path.rstrip("/") or "/"
    if "//" in path or "/./" in f"{path}/" or "/../" in f"{path}/":
        return None
    return path


def _under(path: str, prefixes: frozenset[str]) -> bool:
    """Is canonical *path* one of *prefixes* or below one? O(depth of path), not O(prefixes)."""
    if not prefixes:
        return False
    if "/" in prefixes:
        return True
    while path:
        if path in prefixes:
            return True
        path = path[: path.rfind("/")]
    return False


@dataclass(frozen=True)
class _Table:
    """One table of the file, as parsed: None for each key it does not set."""

    filters: frozenset[int] | None = None
    paths_denied: frozenset[str] | None = None
    paths_allowed: frozenset[str] | None = None
    paths_granted: frozenset[str] | None = None
    connect: tuple[ConnectRule, ...] | None = None
    connect_unix: bool | None = None
    open_peer_fd: bool | None = None
    privileged: bool | None = None
    identity: Credentials | None = None  # tls:/tcp: tables with uid only
    quotas: Mapping[str, int] = dataclasses.field(default_factory=dict)


_BUILTIN = _Table(
    filters=frozenset(WIRE_FILTERS.values()),
    paths_denied=frozenset(),
    paths_allowed=frozenset(),
    paths_granted=frozenset(),
    connect=tuple(ConnectRule.parse(text) for text in DEFAULT_CONNECT),
    connect_unix=True,
    open_peer_fd=True,
    privileged=False,
    quotas=dataclasses.asdict(Limits()),
)


def _overlay(base: _Table, top: _Table) -> _Table:
    """*base* with every key *top* sets replaced (quotas key by key)."""
    changes: dict[str, Any] = {
        f.name: getattr(top, f.name)
        for f in dataclasses.fields(_Table)
        if f.name not in ("quotas", "identity") and getattr(top, f.name) is not None
    }
    return dataclasses.replace(base, **changes, quotas={**base.quotas, **top.quotas})


def _combine_groups(tables: Sequence[_Table]) -> _Table:
    """Several matching "gid:N" tables as one: the most generous of what they set, except
    that denials add up (see the module docstring)."""

    def given(name: str) -> list[Any]:
        return [value for t in tables if (value := getattr(t, name)) is not None]

    def union(name: str) -> frozenset[Any] | None:
        values = given(name)
        return frozenset().union(*values) if values else None

    allowed = given("paths_allowed")
    connect = given("connect")
    quotas: dict[str, int] = {}
    for table in tables:
        for key, value in table.quotas.items():
            quotas[key] = max(value, quotas.get(key, value))
    return _Table(
        filters=union("filters"),
        paths_denied=union("paths_denied"),
        paths_allowed=(
            None
            if not allowed
            else frozenset()
            if any(not a for a in allowed)
            else frozenset().union(*allowed)
        ),
        paths_granted=union("paths_granted"),
        connect=tuple(dict.fromkeys(rule for rules in connect for rule in rules))
        if connect
        else None,
        connect_unix=any(given("connect_unix")) if given("connect_unix") else None,
        open_peer_fd=any(given("open_peer_fd")) if given("open_peer_fd") else None,
        privileged=any(given("privileged")) if given("privileged") else None,
        quotas=quotas,
    )


class Policy:
    """A loaded policy. Immutable: a reload makes a new one. :meth:`for_principal` is cached,
    so calling it for every request costs a dictionary lookup."""

    def __init__(
        self,
        defaults: _Table = _BUILTIN,
        principals: Mapping[str, _Table] | None = None,
        source: str | None = None,
    ) -> None:
        self._defaults = _overlay(_BUILTIN, defaults)
        self._principals = dict(principals or {})
        self.source = source
        self._resolve = functools.lru_cache(maxsize=4096)(self._resolve_uncached)

    @classmethod
    def default(cls) -> Policy:
        """The built-in defaults, for a daemon started without ``--policy``."""
        return cls()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        """Read and check the policy file at *path*; PolicyError (naming the file, the line and
        key where it can, and what is wrong) if it cannot be used."""
        source = os.fspath(path)
        try:
            with open(source, "rb") as file:
                data = file.read()
            text = data.decode("utf-8")
        except OSError as exc:
            raise PolicyError(source, f"cannot read it: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise PolicyError(source, "not UTF-8 text, as TOML must be", line=line) from None
        return cls.parse(text, source)

    @classmethod
    def parse(cls, text: str, source: str = "<policy>") -> Policy:
        """Parse policy *text*; *source* names it in errors."""
        return _Parser(text, source).policy()

    @property
    def principals(self) -> tuple[str, ...]:
        """The principal tables, as named in the file."""
        return tuple(self._principals)

    def describe(self) -> str:
        """One line for logs: where the policy came from and what it names."""
        where = self.source or "built-in defaults"
        if not self._principals:
            return f"{where}: defaults only"
        names = ", ".join(self._principals)
        return f"{where}: defaults and {len(self._principals)} principal table(s): {names}"

    def for_principal(self, principal: Principal) -> Rules:
        """The resolved rules for *principal* (its name, and for a Unix-socket caller its
        gid and groups)."""
        peer = principal.peer
        if peer is None:
            return self._resolve(principal.name, None)
        return self._resolve(
            principal.name, Credentials(peer.uid, peer.gid, tuple(sorted(set(peer.groups))))
        )

    def _resolve_uncached(self, name: str, kernel: Credentials | None) -> Rules:
        tables = ["defaults"]
        rules = self._defaults
        if kernel is not None:
            gids = sorted({kernel.gid, *kernel.groups})
            groups = [g for gid in gids if (g := f"gid:{gid}") in self._principals]
            if groups:
                rules = _overlay(rules, _combine_groups([self._principals[g] for g in groups]))
                tables += groups
        own = self._principals.get(name)
        if own is not None:
            rules = _overlay(rules, own)
            tables.append(name)
        privileged = bool(rules.privileged)
        identity = ROOT if privileged else kernel if kernel is not None else None
        if identity is None and own is not None:
            identity = own.identity
        assert rules.filters is not None and rules.connect is not None
        assert rules.paths_denied is not None and rules.paths_allowed is not None
        assert rules.paths_granted is not None
        return Rules(
            principal=name,
            tables=tuple(tables),
            filters=rules.filters,
            paths_denied=rules.paths_denied,
            paths_allowed=rules.paths_allowed,
            paths_granted=rules.paths_granted,
            connect=rules.connect,
            connect_unix=bool(rules.connect_unix) and identity is not None,
            open_peer_fd=bool(rules.open_peer_fd) and identity is not None,
            privileged=privileged,
            identity=identity,
            quotas=Limits(**rules.quotas),
        )


# --- Parsing -----------------------------------------------------------------------------------

_KEY_TOKEN = re.compile(r"""\s*(?:([A-Za-z0-9_-]+)|"((?:[^"\\]|\\.)*)"|'([^']*)')\s*""")
_HEADER = re.compile(r"\s*\[\[?(.*?)\]\]?\s*(?:#.*)?$")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _dotted_key(text: str) -> tuple[list[str], str] | None:
    """Parse a dotted TOML key at the start of *text*: its parts and the rest of the text."""
    parts: list[str] = []
    while True:
        match = _KEY_TOKEN.match(text)
        if match is None:
            return None
        bare, basic, literal = match.groups()
        if bare is not None:
            parts.append(bare)
        elif basic is not None:
            try:
                parts.append(json.loads(f'"{basic}"'))
            except ValueError:  # a TOML-only escape: the raw text is close enough here
                parts.append(basic)
        else:
            parts.append(literal)
        text = text[match.end() :]
        if not text.startswith("."):
            return parts, text
        text = text[1:]


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Where each table header and key is, by its full path: the line numbers errors name.
    A line scanner, not a parser: tomllib has accepted the text already, and only keys at the
    start of a line and headers matter here (multi-line strings are rare in a policy)."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header is not None:
            parsed = _dotted_key(header.group(1))
            if parsed is not None and not parsed[1].strip():
                table = tuple(parsed[0])
                lines.setdefault(table, number)
                continue
        parsed = _dotted_key(line)
        if parsed is not None and parsed[1].startswith("="):
            lines.setdefault((*table, *parsed[0]), number)
    return lines


def _show(value: Any) -> str:
    """A value as the file would spell it, shortened."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "a table"
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key_name(path: Sequence[str]) -> str:
    return ".".join(p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else json.dumps(p) for p in path)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__  # dates and times: TOML has them, a policy does not


class _Parser:
    """Turns the text of a policy file into a Policy, or a PolicyError that names the line."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self._lines: dict[tuple[str, ...], int] | None = None

    def fail(self, path: Sequence[str], problem: str) -> PolicyError:
        if self._lines is None:
            self._lines = _key_lines(self.text)
        line = None
        for end in range(len(path), 0, -1):  # the key, else the nearest table around it
            line = self._lines.get(tuple(path[:end]))
            if line is not None:
                break
        return PolicyError(self.source, problem, line=line, key=_key_name(path) or None)

    def unknown(self, path: Sequence[str], key: str, known: Iterable[str]) -> PolicyError:
        known = list(known)
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return self.fail([*path, key], f"unknown key; {hint}known: {', '.join(known)}")

    def policy(self) -> Policy:
        try:
            data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            message = str(exc)
            position = _TOML_POSITION.search(message)
            if position is None:
                raise PolicyError(self.source, f"not valid TOML: {message}") from None
            problem = f"not valid TOML: {message[: position.start()]} (column {position[2]})"
            raise PolicyError(self.source, problem, line=int(position[1])) from None
        for key in data:
            if key not in ("version", "defaults", "principal"):
                raise self.unknown([], key, ("version", "defaults", "principal"))
        version = data.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise self.fail(
                ["version"], f"this kqd reads policy format {FORMAT_VERSION}, not {_show(version)}"
            )
        defaults = self.table(["defaults"], self.mapping(["defaults"], data.get("defaults", {})))
        principals: dict[str, _Table] = {}
        for name, body in self.mapping(["principal"], data.get("principal", {})).items():
            principals[name] = self.table(
                ["principal", name], self.mapping(["principal", name], body)
            )
        return Policy(defaults, principals, self.source)

    def mapping(self, path: list[str], value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a table, not {_type_name(value)}")
        return value

    def table(self, path: list[str], body: dict[str, Any]) -> _Table:
        """One [defaults] or [principal."NAME"] table."""
        principal = path[1] if path[0] == "principal" else None
        kind = self.principal_kind(path, principal) if principal is not None else None
        allowed = list(_RULE_KEYS)
        if principal is not None:
            allowed.append("privileged")
            if kind in ("tls", "tcp"):
                allowed += ["uid", "gid"]
        values: dict[str, Any] = {}
        for key, value in body.items():
            where = [*path, key]
            if key not in allowed:
                raise self.misplaced(path, key, kind) or self.unknown(path, key, allowed)
            if key == "filters":
                values[key] = self.filters(where, value)
            elif key in _PATH_KEYS:
                values[key] = self.prefixes(where, value)
            elif key == "connect":
                values[key] = self.destinations(where, value)
            elif key in (*_BOOL_KEYS, "privileged"):
                if not isinstance(value, bool):
                    raise self.fail(where, f"must be true or false, not {_show(value)}")
                values[key] = value
            elif key == "quotas":
                values[key] = self.quotas(where, self.mapping(where, value))
        if values.get("privileged") and kind == "tcp":
            raise self.fail(
                [*path, "privileged"],
                "tcp:anonymous cannot be privileged: anyone who reaches the port would act as "
                "root; use TLS with a client certificate",
            )
        if "gid" in body and "uid" not in body:
            raise self.fail([*path, "gid"], "gid goes with uid: give the uid to act as")
        if "uid" in body:
            if values.get("privileged"):
                raise self.fail(
                    [*path, "uid"], "privileged already means root: give uid or privileged"
                )
            values["identity"] = self.identity(path, body["uid"], body.get("gid"))
        return _Table(**values)

    def principal_kind(self, path: list[str], name: str) -> str:
        match = _PRINCIPAL_RE.fullmatch(name)
        if match is None or (match[3] is not None and not match[3].isprintable()):
            raise self.fail(
                path,
                'not a principal: use "uid:N", "gid:N" (decimal, no leading zeros), '
                '"tls:NAME" or "tcp:anonymous"',
            )
        if match[1] is not None and int(match[2]) > _MAX_ID:
            raise self.fail(path, f"{match[1]} {match[2]} is out of range: 0..{_MAX_ID}")
        return name.partition(":")[0]

    def misplaced(self, path: list[str], key: str, kind: str | None) -> PolicyError | None:
        """A clearer message for a known key in the wrong table."""
        if key == "privileged" and kind is None:
            return self.fail(
                [*path, key],
                'privileged belongs in a [principal."..."] table: root for every caller is '
                "never a default",
            )
        if key in ("uid", "gid"):
            if kind is None:
                return self.fail([*path, key], f'{key} belongs in a [principal."tls:NAME"] table')
            return self.fail(
                [*path, key],
                f"{key} maps TLS and TCP principals to a local user; a Unix-socket caller "
                "is who the kernel says it is",
            )
        return None

    def strings(self, path: list[str], value: Any) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list of strings, not {_type_name(value)}")
        for item in value:
            if not isinstance(item, str):
                raise self.fail(path, f"must be a list of strings; {_show(item)} is not one")
        return value

    def filters(self, path: list[str], value: Any) -> frozenset[int]:
        chosen = set()
        for item in self.strings(path, value):
            name = item.strip().upper().removeprefix("KQ_FILTER_").removeprefix("EVFILT_")
            if name == "SIGNAL":
                raise self.fail(
                    path,
                    "SIGNAL is never allowed over the wire: its knotes would report signals "
                    "sent to the daemon itself",
                )
            if name not in WIRE_FILTERS:
                raise self.fail(
                    path, f"unknown filter {_show(item)}; known: {', '.join(WIRE_FILTERS)}"
                )
            chosen.add(WIRE_FILTERS[name])
        return frozenset(chosen)

    def prefixes(self, path: list[str], value: Any) -> frozenset[str]:
        """Path prefixes, normalized: denials as written and as resolved now, grants and
        allowances only where the two are the same."""
        forms: set[str] = set()
        for item in self.strings(path, value):
            if not item.startswith("/"):
                raise self.fail(path, f"{_show(item)} is not an absolute path")
            if "\0" in item:
                raise self.fail(path, f"{_show(item)} contains a NUL character")
            parts = [p for p in item.split("/") if p]
            if any(p in (".", "..") for p in parts):
                raise self.fail(
                    path, f"{_show(item)} has a '.' or '..' component: write the real path"
                )
            written = "/" + "/".join(parts)
            resolved = posixpath.realpath(written)
            if resolved != written and path[-1] != "paths_denied":
                # A denial may follow links (it only gets wider). A grant or an allowance must
                # not: whoever owns a link on the way could point it anywhere before a reload.
                raise self.fail(
                    path,
                    f"{_show(item)} leads through a symbolic link to {_show(resolved)}: write "
                    "the real path (grants and allowed paths never follow links)",
                )
            forms.update((written, resolved))
        return frozenset(forms)

    def destinations(self, path: list[str], value: Any) -> tuple[ConnectRule, ...]:
        rules: list[ConnectRule] = []
        for item in self.strings(path, value):
            try:
                rules.append(ConnectRule.parse(item))
            except ValueError as exc:
                raise self.fail(path, str(exc)) from None
        return tuple(dict.fromkeys(rules))

    def quotas(self, path: list[str], body: dict[str, Any]) -> dict[str, int]:
        for key, value in body.items():
            if key not in LIMIT_NAMES:
                raise self.unknown(path, key, LIMIT_NAMES)
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail([*path, key], f"must be a whole number, not {_show(value)}")
            if not 0 <= value <= _MAX_QUOTA:
                raise self.fail([*path, key], f"{value:,} is out of range: 0..{_MAX_QUOTA:,}")
        return dict(body)

    def identity(self, path: list[str], uid: Any, gid: Any) -> Credentials:
        """The local user a TLS or TCP principal acts as, from the user database now."""
        for key, value in (("uid", uid), ("gid", gid)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail([*path, key], f"must be a number, not {_show(value)}")
            if not 0 <= value <= _MAX_ID:
                raise self.fail([*path, key], f"{value} is out of range: 0..{_MAX_ID}")
        if uid == 0:
            raise self.fail([*path, "uid"], "uid 0 is root: write privileged = true to mean that")
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            if gid is None:
                raise self.fail(
                    [*path, "uid"],
                    f"uid {uid} has no entry in the user database; create the user, or give "
                    "its gid too (it then has no supplementary groups)",
                ) from None
            return Credentials(uid, gid, ())
        primary = entry.pw_gid if gid is None else gid
        groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, primary))))
        return Credentials(uid, primary, groups)
