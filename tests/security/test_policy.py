"""The operator's policy (kqd/daemon/policy.py): parsing, errors, resolution and matching.

Pure functions of the policy text and a principal: no daemon, no root, no sleeping.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from kqd import cli
from kqd.core.constants import (
    KQ_FILTER_PROC,
    KQ_FILTER_READ,
    KQ_FILTER_SIGNAL,
    KQ_FILTER_TIMER,
    KQ_FILTER_USER,
    KQ_FILTER_VNODE,
    KQ_FILTER_WRITE,
)
from kqd.daemon.credentials import ROOT, Credentials
from kqd.daemon.identity import Principal
from kqd.daemon.policy import ConnectRule, Policy, PolicyError
from kqd.daemon.quotas import Limits

POLICIES = Path(__file__).resolve().parents[2] / "deploy" / "policy"


def unix(uid: int, gid: int | None = None, groups: tuple[int, ...] = ()) -> Principal:
    return Principal.local(Credentials(uid, uid if gid is None else gid, groups, 4242))


TLS_ALICE = Principal("tls:alice")
ANONYMOUS = Principal("tcp:anonymous")

FULL = """\
version = 1

[defaults]
filters = ["READ", "WRITE", "VNODE", "PROC", "TIMER", "USER"]
paths_denied = ["/etc/shadow"]
paths_allowed = []
paths_granted = []
connect = ["127.0.0.0/8", "::1/128"]
connect_unix = true
open_peer_fd = true

[defaults.quotas]
queues = 8
knotes = 1000

[principal."uid:1000"]
filters = ["PROC"]
connect = ["10.0.0.0/8:5432"]

[principal."uid:1000".quotas]
knotes = 5000

[principal."gid:100"]
paths_granted = ["/srv/shared"]
open_peer_fd = false

[principal."gid:200"]
paths_granted = ["/srv/other"]
connect_unix = false

[principal."gid:200".quotas]
queues = 20

[principal."tls:alice"]
paths_granted = ["/srv/alice"]

[principal."tls:admin"]
privileged = true
"""


@pytest.fixture(scope="module")
def full() -> Policy:
    return Policy.parse(FULL, "full.toml")


# --- Parsing and errors ----------------------------------------------------------------------


def test_a_valid_file_loads_with_every_key(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(FULL)
    policy = Policy.load(path)
    assert policy.source == str(path)
    assert policy.principals == ("uid:1000", "gid:100", "gid:200", "tls:alice", "tls:admin")
    assert "5 principal table(s)" in policy.describe()
    rules = policy.for_principal(unix(1000))
    assert rules.filters == frozenset({KQ_FILTER_PROC})
    assert rules.quotas == Limits(queues=8, knotes=5000)


def test_the_shipped_default_policy_is_the_builtin_default() -> None:
    shipped = Policy.load(POLICIES / "default.toml")
    builtin = Policy.default()
    for principal in (unix(1000, 1000, (27,)), unix(0), TLS_ALICE, ANONYMOUS):
        assert shipped.for_principal(principal) == builtin.for_principal(principal)


def test_the_default_names_every_quota() -> None:
    text = (POLICIES / "default.toml").read_text()
    for name, value in vars(Limits()).items():
        assert f"\n{name} = {value}" in text, name


# (text, line, key, part of the problem); each error is one line "FILE:LINE: KEY: problem".
ERRORS = [
    ("[defaults]\nfilters = [READ]\n", 2, None, "not valid TOML"),
    ("[defaults]\nfilter = ['READ']\n", 2, "defaults.filter", "did you mean 'filters'"),
    ("[defaults]\nfilters = ['READ', 'SIGNAL']\n", 2, "defaults.filters", "SIGNAL is never"),
    ("[defaults]\nfilters = ['EXCEPT']\n", 2, "defaults.filters", "unknown filter"),
    ("[defaults]\nfilters = 'READ'\n", 2, "defaults.filters", "must be a list of strings"),
    ("[defaults]\nconnect_unix = 1\n", 2, "defaults.connect_unix", "must be true or false"),
    ("[defaults.quotas]\nknotes = 'many'\n", 2, "defaults.quotas.knotes", "whole number"),
    ("[defaults.quotas]\nknotes = -1\n", 2, "defaults.quotas.knotes", "out of range"),
    ("[defaults.quotas]\nknote = 3\n", 2, "defaults.quotas.knote", "did you mean 'knotes'"),
    ("[defaults]\nprivileged = true\n", 2, "defaults.privileged", "never a default"),
    ("[defaults]\nuid = 1000\n", 2, "defaults.uid", "belongs in a"),
    ('[principal."uid:5"]\nuid = 7\n', 2, 'principal."uid:5".uid', "who the kernel says"),
    ('[principal."gid:5"]\ngid = 7\n', 2, 'principal."gid:5".gid', "who the kernel says"),
    ('[principal."user:5"]\n', 1, 'principal."user:5"', "not a principal"),
    ('[principal."uid:0100"]\n', 1, 'principal."uid:0100"', "no leading zeros"),
    ('[principal."uid:4294967295"]\n', 1, 'principal."uid:4294967295"', "out of range"),
    ('[principal]\n"uid:1" = 3\n', 2, 'principal."uid:1"', "must be a table"),
    ('[principal."tcp:anonymous"]\nprivileged = true\n', 2, None, "cannot be privileged"),
    ('[principal."tls:x"]\nuid = 0\n', 2, 'principal."tls:x".uid', "privileged = true"),
    ('[principal."tls:x"]\nuid = "bob"\n', 2, 'principal."tls:x".uid', "must be a number"),
    ('[principal."tls:x"]\ngid = 5\n', 2, 'principal."tls:x".gid', "goes with uid"),
    ('[principal."tls:x"]\nprivileged = true\nuid = 5\n', 3, None, "give uid or privileged"),
    ("[defaults]\nconnect = ['10.0.0.1/8']\n", 2, "defaults.connect", "did you mean 10.0.0.0/8"),
    ("[defaults]\nconnect = ['10.0.0.0/8:99999']\n", 2, "defaults.connect", "65535"),
    ("[defaults]\nconnect = ['10.0.0.0/8:9-1']\n", 2, "defaults.connect", "low to high"),
    ("[defaults]\nconnect = ['10.0.0.0/8:http']\n", 2, "defaults.connect", "N or LOW-HIGH"),
    ("[defaults]\nconnect = ['example.com']\n", 2, "defaults.connect", "not an address"),
    ("[defaults]\nconnect = ['[::1']\n", 2, "defaults.connect", "[IPV6]:PORT"),
    ("[defaults]\npaths_denied = ['var/log']\n", 2, "defaults.paths_denied", "not an absolute"),
    ("[defaults]\npaths_granted = ['/a/../b']\n", 2, "defaults.paths_granted", "'..'"),
    ("version = 2\n", 1, "version", "format 1"),
    ("defualts = 3\n", 1, "defualts", "did you mean 'defaults'"),
    ("defaults = 3\n", 1, "defaults", "must be a table"),
    ('[principal."uid:1"]\nquotas.knotes = true\n', 2, None, "whole number"),
    ('[principal."uid:1"]\nquotas = {queues = 1.5}\n', 2, None, "whole number"),
    ("[defaults]\nconnect_unix = true\nconnect_unix = false\n", 3, None, "not valid TOML"),
    ("[defaults]\n# a comment\n\n  open_peer_fd = 1979-05-27\n", 4, None, "true or false"),
]


@pytest.mark.parametrize(("text", "line", "key", "problem"), ERRORS)
def test_errors_name_the_file_line_key_and_problem(
    text: str, line: int, key: str | None, problem: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        Policy.parse(text, "p.toml")
    error = caught.value
    message = str(error)
    assert "\n" not in message and "Traceback" not in message
    assert error.source == "p.toml" and error.line == line, message
    assert message.startswith(f"p.toml:{line}: "), message
    if key is not None:
        assert error.key == key and f": {key}: " in message, message
    assert problem in message
    assert error.__suppress_context__ or error.__cause__ is None


def test_an_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"missing\.toml: cannot read it: No such file"):
        Policy.load(tmp_path / "missing.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"[defaults]\n\xff\n")
    with pytest.raises(PolicyError, match=r"binary\.toml:2: not UTF-8"):
        Policy.load(binary)


def test_policy_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(FULL)
    bad = tmp_path / "bad.toml"
    bad.write_text("[defaults]\nfilters = ['SIGNAL']\n")
    assert cli.main(["policy", "check", str(good)]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")
    assert cli.main(["policy", "check", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"kqd policy check: {bad}:2: defaults.filters: SIGNAL")
    with pytest.raises(SystemExit) as usage:
        cli.main(["policy", "check"])
    assert usage.value.code == 2


def test_serve_refuses_a_broken_policy_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[defaults]\nconnect_unix = 'yes'\n")
    socket_path = tmp_path / "kqd.sock"
    assert cli.main(["serve", "--listen", f"unix://{socket_path}", "--policy", str(bad)]) == 2
    err = capsys.readouterr().err
    expected = f'{bad}:2: defaults.connect_unix: must be true or false, not "yes"'
    assert err == f"kqd serve: policy {expected}\n"
    assert not socket_path.exists()


# --- Resolution --------------------------------------------------------------------------------


def test_resolution_defaults_then_groups_then_own(full: Policy) -> None:
    rules = full.for_principal(unix(1000, 1000, (100,)))
    assert rules.tables == ("defaults", "gid:100", "uid:1000")
    assert rules.filters == frozenset({KQ_FILTER_PROC})  # own table
    assert "/srv/shared" in rules.paths_granted  # group table
    assert rules.open_peer_fd is False  # group table
    assert "/etc/shadow" in rules.paths_denied  # defaults
    assert rules.quotas.knotes == 5000 and rules.quotas.queues == 8  # key by key
    assert rules.quotas.streams == Limits().streams  # built-in
    assert [str(r) for r in rules.connect] == ["10.0.0.0/8:5432"]  # replaced whole


def test_groups_match_the_primary_gid_and_supplementary_groups(full: Policy) -> None:
    assert full.for_principal(unix(7, 100)).tables == ("defaults", "gid:100")
    assert full.for_principal(unix(7, 7, (200,))).tables == ("defaults", "gid:200")
    assert full.for_principal(unix(7, 7, (5, 6))).tables == ("defaults",)


def test_several_groups_combine_as_the_most_generous() -> None:
    policy = Policy.parse(
        """
        [defaults]
        filters = ["PROC"]
        [principal."gid:1"]
        filters = ["READ"]
        paths_allowed = ["/a"]
        paths_denied = ["/x"]
        connect_unix = false
        [principal."gid:1".quotas]
        knotes = 10
        queues = 99
        [principal."gid:2"]
        filters = ["TIMER"]
        paths_allowed = ["/b"]
        paths_denied = ["/y"]
        connect_unix = true
        [principal."gid:2".quotas]
        knotes = 20
        """
    )
    rules = policy.for_principal(unix(9, 1, (2,)))
    assert rules.tables == ("defaults", "gid:1", "gid:2")
    assert rules.filters == frozenset({KQ_FILTER_READ, KQ_FILTER_TIMER})
    assert rules.paths_allowed == frozenset({"/a", "/b"})
    assert rules.paths_denied == frozenset({"/x", "/y"}), "denials add up"
    assert rules.connect_unix is True
    assert (rules.quotas.knotes, rules.quotas.queues) == (20, 99)


def test_an_unrestricted_group_lifts_paths_allowed() -> None:
    policy = Policy.parse(
        """
        [defaults]
        paths_allowed = ["/srv"]
        [principal."gid:1"]
        paths_allowed = ["/a"]
        [principal."gid:2"]
        paths_allowed = []
        """
    )
    assert policy.for_principal(unix(9, 1)).path_decision("/etc/hosts") == "deny"
    assert policy.for_principal(unix(9, 1, (2,))).path_decision("/etc/hosts") == "caller"


def test_group_tables_do_not_apply_to_tls_principals(full: Policy) -> None:
    rules = full.for_principal(TLS_ALICE)
    assert rules.tables == ("defaults", "tls:alice")


def test_unix_callers_act_as_themselves(full: Policy) -> None:
    rules = full.for_principal(unix(1000, 1000, (27, 4, 27)))
    assert rules.identity == Credentials(1000, 1000, (4, 27))
    assert rules.connect_unix and not rules.privileged


def test_rules_are_cached_per_identity(full: Policy) -> None:
    assert full.for_principal(unix(1000, 1000, (4,))) is full.for_principal(unix(1000, 1000, (4,)))
    assert full.for_principal(unix(1000, 1000, (4,))) != full.for_principal(
        unix(1000, 1000, (100,))
    )


def test_signal_is_never_allowed(full: Policy) -> None:
    for principal in (unix(1000), unix(0), TLS_ALICE, Principal("tls:admin")):
        rules = full.for_principal(principal)
        assert not rules.filter_allowed(KQ_FILTER_SIGNAL)
    everything = Policy.default().for_principal(unix(5))
    for value in (KQ_FILTER_READ, KQ_FILTER_WRITE, KQ_FILTER_VNODE, KQ_FILTER_PROC):
        assert everything.filter_allowed(value)
    assert everything.filter_allowed(KQ_FILTER_TIMER) and everything.filter_allowed(KQ_FILTER_USER)
    assert not everything.filter_allowed(KQ_FILTER_SIGNAL)
    assert not everything.filter_allowed(-99)


def test_filter_names_are_forgiving() -> None:
    policy = Policy.parse("[defaults]\nfilters = ['read', 'KQ_FILTER_PROC', 'EVFILT_TIMER']\n")
    assert policy.for_principal(unix(1)).filters == frozenset(
        {KQ_FILTER_READ, KQ_FILTER_PROC, KQ_FILTER_TIMER}
    )


# --- Principals without a local identity, privileged ones, TLS mapping -------------------------


@pytest.mark.parametrize("principal", [TLS_ALICE, ANONYMOUS])
def test_no_local_identity_by_default(principal: Principal) -> None:
    rules = Policy.default().for_principal(principal)
    assert rules.identity is None and not rules.privileged
    assert rules.path_decision("/etc/hosts") == "deny", "Open refused unless granted"
    assert rules.open_peer_fd is False and rules.connect_unix is False
    assert rules.connect_allowed("127.0.0.1", 80) and rules.connect_allowed("::1", 80)
    assert not rules.connect_allowed("10.0.0.1", 80)


def test_no_local_identity_opens_only_granted_paths(full: Policy) -> None:
    rules = full.for_principal(TLS_ALICE)
    assert rules.path_decision("/srv/alice/ready") == "granted"
    assert rules.path_decision("/srv/alice") == "granted"
    assert rules.path_decision("/srv/bob") == "deny"


def test_privileged_acts_as_root_within_denials_and_allowed_paths() -> None:
    policy = Policy.parse(
        """
        [defaults]
        paths_denied = ["/etc/shadow"]
        [principal."tls:admin"]
        privileged = true
        [principal."gid:10"]
        privileged = true
        paths_allowed = ["/var"]
        """
    )
    admin = policy.for_principal(Principal("tls:admin"))
    assert admin.privileged and admin.identity == ROOT
    assert admin.open_peer_fd and admin.connect_unix
    assert admin.path_decision("/root/.profile") == "granted"
    assert admin.path_decision("/etc/shadow") == "deny"
    wheel = policy.for_principal(unix(1000, 1000, (10,)))
    assert wheel.privileged and wheel.identity == ROOT
    assert wheel.path_decision("/var/log/syslog") == "granted"
    assert wheel.path_decision("/etc/hosts") == "deny"


def _some_user() -> pwd.struct_passwd:
    users = [entry for entry in pwd.getpwall() if entry.pw_uid != 0]
    if not users:
        pytest.skip("no user besides root in the user database")
    return users[0]


def test_tls_principal_mapped_to_a_local_user() -> None:
    user = _some_user()
    policy = Policy.parse(f'[principal."tls:alice"]\nuid = {user.pw_uid}\n')
    rules = policy.for_principal(TLS_ALICE)
    groups = tuple(sorted(set(os.getgrouplist(user.pw_name, user.pw_gid))))
    assert rules.identity == Credentials(user.pw_uid, user.pw_gid, groups)
    assert rules.path_decision("/etc/hosts") == "caller"
    assert rules.open_peer_fd and rules.connect_unix and not rules.privileged


def test_tls_mapping_with_a_gid_of_its_own() -> None:
    user = _some_user()
    policy = Policy.parse(f'[principal."tls:alice"]\nuid = {user.pw_uid}\ngid = 4321\n')
    identity = policy.for_principal(TLS_ALICE).identity
    assert identity is not None and (identity.uid, identity.gid) == (user.pw_uid, 4321)
    assert 4321 in identity.groups


def test_tls_mapping_to_a_uid_without_a_user() -> None:
    uid = next(u for u in range(3_999_999_000, 4_000_000_000) if not _has_user(u))
    with pytest.raises(PolicyError, match="no entry in the user database"):
        Policy.parse(f'[principal."tls:alice"]\nuid = {uid}\n')
    policy = Policy.parse(f'[principal."tls:alice"]\nuid = {uid}\ngid = {uid}\n')
    assert policy.for_principal(TLS_ALICE).identity == Credentials(uid, uid, ())


def _has_user(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


# --- Paths -----------------------------------------------------------------------------------


def _paths(**lists: list[str]) -> Policy:
    lines = "\n".join(f"{key} = {value!r}" for key, value in lists.items())
    return Policy.parse(f"[defaults]\n{lines}\n".replace("'", '"'))


def test_prefixes_match_whole_components() -> None:
    rules = _paths(paths_denied=["/var/log"]).for_principal(unix(5))
    assert rules.path_decision("/var/log") == "deny"
    assert rules.path_decision("/var/log/syslog") == "deny"
    assert rules.path_decision("/var/log/nginx/access.log") == "deny"
    assert rules.path_decision("/var/logs") == "caller"
    assert rules.path_decision("/var/logs/x") == "caller"
    assert rules.path_decision("/var/lo") == "caller"
    assert rules.path_decision("/var") == "caller"


def test_prefixes_are_normalized_when_loaded() -> None:
    rules = _paths(paths_denied=["/var//log/", "/srv/"]).for_principal(unix(5))
    assert rules.path_decision("/var/log/x") == "deny"
    assert rules.path_decision("/srv") == "deny"


def test_the_root_prefix_covers_everything() -> None:
    rules = _paths(paths_granted=["/"]).for_principal(ANONYMOUS)
    assert rules.path_decision("/") == "granted"
    assert rules.path_decision("/anything/at/all") == "granted"


@pytest.mark.parametrize(
    "path", ["relative/path", "", "/var/../etc/shadow", "/var/./log", "/a//b", "/a/..", "/a\0"]
)
def test_paths_that_are_not_canonical_are_denied(path: str) -> None:
    assert Policy.default().for_principal(unix(5)).path_decision(path) == "deny"


def test_a_trailing_slash_on_the_real_path_is_harmless() -> None:
    rules = _paths(paths_denied=["/var/log"]).for_principal(unix(5))
    assert rules.path_decision("/var/log/") == "deny"
    assert Policy.default().for_principal(unix(5)).path_decision("/") == "caller"


def test_allowed_paths_restrict_and_grants_are_allowed() -> None:
    rules = _paths(
        paths_allowed=["/srv"], paths_granted=["/opt/app/ready"], paths_denied=["/srv/secret"]
    ).for_principal(unix(5))
    assert rules.path_decision("/srv/www/index.html") == "caller"
    assert rules.path_decision("/etc/hosts") == "deny"
    assert rules.path_decision("/opt/app/ready") == "granted"
    assert rules.path_decision("/opt/app/other") == "deny"
    assert rules.path_decision("/srv/secret/key") == "deny", "denials beat everything"


def test_denials_beat_grants() -> None:
    rules = _paths(paths_granted=["/srv"], paths_denied=["/srv/private"]).for_principal(ANONYMOUS)
    assert rules.path_decision("/srv/public") == "granted"
    assert rules.path_decision("/srv/private/x") == "deny"


def test_a_symlinked_prefix_also_matches_where_it_leads(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    rules = _paths(paths_denied=[str(tmp_path / "link")]).for_principal(unix(5))
    resolved = os.path.realpath(real)
    assert rules.path_decision(f"{resolved}/file") == "deny", "the real path is checked"
    assert rules.path_decision(f"{tmp_path}/link/file") == "deny", "and the written one"
    assert rules.path_decision(f"{os.path.realpath(tmp_path)}/other") == "caller"


@pytest.mark.parametrize("key", ["paths_granted", "paths_allowed"])
def test_grants_and_allowances_never_follow_links(tmp_path: Path, key: str) -> None:
    (tmp_path / "link").symlink_to("/")
    with pytest.raises(PolicyError, match="leads through a symbolic link") as caught:
        _paths(**{key: [str(tmp_path / "link")]})
    assert caught.value.key == f"defaults.{key}"
    real = os.path.realpath(tmp_path)
    _paths(**{key: [real]})  # the real path is fine


# --- Destinations ------------------------------------------------------------------------------


def _connect(*entries: str) -> Policy:
    quoted = ", ".join(f'"{e}"' for e in entries)
    return Policy.parse(f"[defaults]\nconnect = [{quoted}]\n")


def test_connect_ipv4_networks_and_ports() -> None:
    policy = _connect("10.0.0.0/8:5432", "192.0.2.7:8000-8999", "198.51.100.1")
    rules = policy.for_principal(unix(5))
    assert rules.connect_allowed("10.1.2.3", 5432)
    assert not rules.connect_allowed("10.1.2.3", 5433)
    assert not rules.connect_allowed("11.0.0.1", 5432)
    assert rules.connect_allowed("192.0.2.7", 8000) and rules.connect_allowed("192.0.2.7", 8999)
    assert not rules.connect_allowed("192.0.2.7", 9000)
    assert not rules.connect_allowed("192.0.2.8", 8500)
    assert rules.connect_allowed("198.51.100.1", 1) and rules.connect_allowed("198.51.100.1", 65535)
    assert not rules.connect_allowed("127.0.0.1", 80), "replaces the default loopback"


def test_connect_ipv6_networks_and_ports() -> None:
    policy = _connect("2001:db8::/32", "::1/128:5432", "[fd00::/8]:443", "[fe80::1]:22")
    rules = policy.for_principal(unix(5))
    assert rules.connect_allowed("2001:db8::1", 80)
    assert not rules.connect_allowed("2001:db9::1", 80)
    assert rules.connect_allowed("::1", 5432) and not rules.connect_allowed("::1", 5433)
    assert rules.connect_allowed("fd12:3456::1", 443)
    assert not rules.connect_allowed("fd12:3456::1", 444)
    assert rules.connect_allowed("fe80::1", 22) and not rules.connect_allowed("fe80::2", 22)


def test_ipv4_mapped_addresses_match_as_ipv4() -> None:
    rules = Policy.default().for_principal(unix(5))
    assert rules.connect_allowed("::ffff:127.0.0.1", 80)
    assert not rules.connect_allowed("::ffff:10.0.0.1", 80)


def test_unparsable_or_unspecified_addresses_are_refused() -> None:
    rules = Policy.default().for_principal(unix(5))
    assert not rules.connect_allowed("localhost", 80)
    assert not rules.connect_allowed("", 80)
    assert not rules.connect_allowed("0.0.0.0", 80), "this host, but no rule contains it"
    assert not rules.connect_allowed("::", 80)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.0.0.0/8:80", "10.0.0.0/8:80"),
        ("192.0.2.7:80-90", "192.0.2.7/32:80-90"),
        ("::1/128:5432", "::1/128:5432"),
        ("[2001:db8::/32]:1-2", "2001:db8::/32:1-2"),
        ("2001:db8::1", "2001:db8::1/128"),
    ],
)
def test_connect_rules_parse(text: str, shown: str) -> None:
    assert str(ConnectRule.parse(text)) == shown
