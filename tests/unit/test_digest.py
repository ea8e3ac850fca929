"""Digest authentication: RFC 2617 / RFC 7616 vectors, header round trips, server verdicts."""

import base64
import dataclasses
import hashlib

import pytest

import appliance.sip.digest as digest
from appliance.sip.digest import (
    Challenge,
    Credentials,
    DigestError,
    DigestServer,
    Verdict,
    answer_challenge,
    compute_ha1,
    compute_response,
    compute_response_ha1,
    nonce_issuer,
    parse_challenge,
    parse_credentials,
    select_challenge,
)

T0 = 1_700_000_000.0
REALM = "office.example"
USERS = {"alice": "s3cret", "bob": 'pa"ss\\word'}
lookup = USERS.get

# --- RFC vectors ---------------------------------------------------------------------------------

RFC2617_AUTHORIZATION = (
    'Digest username="Mufasa",\r\n'
    '     realm="testrealm@host.com",\r\n'
    '     nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",\r\n'
    '     uri="/dir/index.html",\r\n'
    "     qop=auth,\r\n"
    "     nc=00000001,\r\n"
    '     cnonce="0a4f113b",\r\n'
    '     response="6629fae49393a05397450978507c4ef1",\r\n'
    '     opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)

RFC7616_AUTHORIZATION = (
    'Digest username="Mufasa",\r\n'
    '    realm="http-auth@example.org",\r\n'
    '    uri="/dir/index.html",\r\n'
    "    algorithm=SHA-256,\r\n"
    '    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",\r\n'
    "    nc=00000001,\r\n"
    '    cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",\r\n'
    "    qop=auth,\r\n"
    '    response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",\r\n'
    '    opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)


def test_rfc2617_md5_example():
    creds = parse_credentials(RFC2617_AUTHORIZATION)
    assert creds.algorithm == "MD5" and creds.qop == "auth" and creds.nc == "00000001"
    got = compute_response(
        "MD5", "Mufasa", "testrealm@host.com", "Circle Of Life", "GET", "/dir/index.html",
        creds.nonce, "auth", "00000001", "0a4f113b",
    )  # fmt: skip
    assert got == creds.response == "6629fae49393a05397450978507c4ef1"


def test_rfc7616_sha256_example():
    creds = parse_credentials(RFC7616_AUTHORIZATION)
    assert creds.algorithm == "SHA-256"
    got = compute_response(
        "SHA-256", "Mufasa", "http-auth@example.org", "Circle of Life", "GET", "/dir/index.html",
        creds.nonce, creds.qop, creds.nc, creds.cnonce,
    )  # fmt: skip
    assert got == creds.response
    assert got == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


def test_rfc7616_md5_example_and_ha1_variant():
    args = ("GET", "/dir/index.html", "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "auth")
    tail = ("00000001", "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
    ha1 = compute_ha1("MD5", "Mufasa", "http-auth@example.org", "Circle of Life")
    assert compute_response_ha1("md5", ha1, *args, *tail) == "8ca523f5e9506fed4657c9700eebdbec"


def test_answer_challenge_reproduces_rfc2617():
    challenge = parse_challenge(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert challenge.qop == ["auth", "auth-int"] and challenge.algorithm == "MD5"
    creds = answer_challenge(
        challenge, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", cnonce="0a4f113b"
    )
    expected = parse_credentials(RFC2617_AUTHORIZATION)
    assert _fields(creds) == _fields(expected) | {"params": {}}
    assert parse_credentials(creds.to_header()).response == "6629fae49393a05397450978507c4ef1"


def test_sess_variant_and_no_qop():
    sess = compute_response(
        "MD5-sess", "u", "r", "p", "REGISTER", "sip:r", "n", "auth", "00000001", "c"
    )
    ha1 = compute_ha1("MD5", "u", "r", "p")
    assert sess == compute_response_ha1(
        "MD5-sess", ha1, "REGISTER", "sip:r", "n", "auth", "00000001", "c"
    )
    assert sess != compute_response(
        "MD5", "u", "r", "p", "REGISTER", "sip:r", "n", "auth", "00000001", "c"
    )
    with pytest.raises(DigestError):
        compute_response("SHA-256-sess", "u", "r", "p", "REGISTER", "sip:r", "n")  # no cnonce
    with pytest.raises(DigestError):
        compute_response("SHA-512", "u", "r", "p", "REGISTER", "sip:r", "n")
    with pytest.raises(DigestError):
        compute_response(
            "MD5", "u", "r", "p", "REGISTER", "sip:r", "n", "auth-int", "00000001", "c"
        )


# --- parsing and formatting ----------------------------------------------------------------------


def test_parse_challenge_fields_and_lenient_whitespace():
    c = parse_challenge(
        '  dIgEsT\trealm = "atlanta.com" ,domain="sip:ss1.carrier.com",, '
        'NONCE=abc123, algorithm=sha-256-SESS, stale=true, qop=auth , opaque=""'
    )
    assert (c.realm, c.nonce, c.algorithm, c.qop) == (
        "atlanta.com",
        "abc123",
        "SHA-256-sess",
        ["auth"],
    )
    assert c.stale is True and c.opaque == ""
    assert c.params["domain"] == "sip:ss1.carrier.com"
    assert parse_challenge('Digest realm="r", nonce="n", stale=FALSE').stale is False


def test_quoted_strings_with_escapes_and_commas():
    c = parse_challenge(r'Digest realm="a \"quoted\", realm\\x", nonce="n,1"')
    assert c.realm == 'a "quoted", realm\\x' and c.nonce == "n,1"
    assert c.to_header() == r'Digest realm="a \"quoted\", realm\\x", nonce="n,1", algorithm=MD5'
    back = parse_challenge(c.to_header())
    assert (back.realm, back.nonce) == (c.realm, c.nonce)


def _fields(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def test_challenge_canonical_format_and_round_trip():
    c = Challenge("biloxi.com", "n0nce", "SHA-256", ["auth"], opaque="op", stale=True)
    header = c.to_header()
    assert header == (
        'Digest realm="biloxi.com", nonce="n0nce", opaque="op", stale=TRUE, algorithm=SHA-256, '
        'qop="auth"'
    )
    back = parse_challenge(header)
    assert (back.realm, back.nonce, back.algorithm, back.qop, back.opaque, back.stale) == (
        "biloxi.com", "n0nce", "SHA-256", ["auth"], "op", True,
    )  # fmt: skip
    assert parse_challenge(back.to_header()).to_header() == header


def test_credentials_canonical_format_and_round_trip():
    creds = Credentials(
        username='b"o\\b', realm="biloxi.com", nonce="n", uri="sip:bob@biloxi.com",
        response="ab" * 16, qop="auth", cnonce="0a4f113b", nc="00000001", opaque="op",
    )  # fmt: skip
    header = creds.to_header()
    assert header == (
        'Digest username="b\\"o\\\\b", realm="biloxi.com", nonce="n", uri="sip:bob@biloxi.com", '
        f'response="{"ab" * 16}", algorithm=MD5, cnonce="0a4f113b", opaque="op", qop=auth, '
        "nc=00000001"
    )
    back = parse_credentials(header)
    assert _fields(back) | {"params": {}} == _fields(creds)
    assert back.to_header() == header


def test_unknown_params_are_kept_and_rendered():
    c = parse_challenge('Digest realm="r", nonce="n", charset=UTF-8, userhash=false, foo="x y"')
    assert c.params["charset"] == "UTF-8"
    assert c.to_header().endswith(', charset=UTF-8, userhash=false, foo="x y"')


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Digest",
        'Basic realm="r", nonce="n"',
        'Digest realm="r"',  # no nonce
        'Digest realm="r, nonce="n"',  # unterminated quote
        'Digest realm="r" nonce="n"',  # missing comma
        'Digest realm="r", nonce="n", realm="x"',  # duplicate
        'Digest realm=, nonce="n"',
        'Digest realm="r", nonce="n", Basic',
        'Digest realm="r"x, nonce="n"',
        "Digest =x",
    ],
)
def test_parse_challenge_rejects_garbage(value):
    with pytest.raises(DigestError):
        parse_challenge(value)
    assert issubclass(DigestError, ValueError)


@pytest.mark.parametrize(
    "value",
    [
        'Digest username="u", realm="r", nonce="n", uri="sip:r"',  # no response
        'Digest username="u", realm="r", nonce="n", uri="sip:r", response="x", qop=auth',
        'Digest username="u", realm="r", nonce="n", uri="sip:r", response="x", qop=auth, '
        'cnonce="c", nc=1',  # nc must be 8LHEX
    ],
)
def test_parse_credentials_rejects_garbage(value):
    with pytest.raises(DigestError):
        parse_credentials(value)


def test_no_header_injection():
    with pytest.raises(DigestError):
        Challenge("r\r\nVia: evil", "n").to_header()


def test_pathological_input_is_fast():
    # possessive regexes: no catastrophic backtracking on long unterminated input
    with pytest.raises(DigestError):
        parse_challenge('Digest realm="' + "\\a" * 50_000)
    with pytest.raises(DigestError):
        parse_challenge("Digest " + "a=b, " * 10_000 + "=")


# --- client helpers -----------------------------------------------------------------------------


def test_answer_challenge_generates_cnonce_and_formats_nc():
    c = Challenge(REALM, "n", "SHA-256", ["auth"])
    a, b = (
        answer_challenge(c, "REGISTER", "sip:x", "alice", "pw", nc=0x1F),
        answer_challenge(c, "REGISTER", "sip:x", "alice", "pw"),
    )
    assert a.nc == "0000001f" and a.cnonce and a.cnonce != b.cnonce and a.qop == "auth"
    legacy = answer_challenge(Challenge(REALM, "n"), "REGISTER", "sip:x", "alice", "pw")
    assert legacy.qop is legacy.nc is legacy.cnonce is None
    with pytest.raises(DigestError):
        answer_challenge(Challenge(REALM, "n", qop=["auth-int"]), "INVITE", "sip:x", "a", "p")


def test_select_challenge_takes_topmost_supported():
    md5, sha = Challenge("r", "n", "MD5"), Challenge("r", "n", "SHA-256")
    assert select_challenge([Challenge("r", "n", "SHA-512-256"), sha, md5]) is sha
    with pytest.raises(DigestError):
        select_challenge([])


# --- server --------------------------------------------------------------------------------------


def make_server(**kw) -> DigestServer:
    return DigestServer(REALM, secret=b"k" * 32, **kw)


def login(server, user="alice", password=None, now=T0, alg="SHA-256", nc=1, method="REGISTER"):
    challenge = next(c for c in server.challenges(now) if c.algorithm == alg)
    pw = USERS[user] if password is None else password
    return answer_challenge(challenge, method, f"sip:{REALM}", user, pw, nc=nc)


def test_challenge_list_order_and_shape():
    challenges = make_server().challenges(T0)
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    assert all(c.qop == ["auth"] and c.realm == REALM and not c.stale for c in challenges)
    assert challenges[0].nonce == challenges[1].nonce
    assert challenges[0].to_header().startswith(f'Digest realm="{REALM}", nonce="')
    assert all(c.stale for c in make_server().challenges(T0, stale=True))
    assert make_server().challenges(T0)[0].nonce != challenges[0].nonce  # salted


@pytest.mark.parametrize("stale", [False, True])
def test_challenge_headers_are_challenges_text_with_fresh_nonces(stale):
    server = make_server()
    first, second = server.challenge_headers(T0, stale), server.challenge_headers(T0, stale)
    expected = server.challenges(T0, stale)
    for headers in (first, second):
        parsed = [parse_challenge(h) for h in headers]
        assert len({p.nonce for p in parsed}) == 1  # one nonce shared by both algorithms
        nonce = parsed[0].nonce
        assert server.nonce_time(nonce) == T0
        assert [h.replace(nonce, "N") for h in headers] == [
            c.to_header().replace(c.nonce, "N") for c in expected]
    assert parse_challenge(first[0]).nonce != parse_challenge(second[0]).nonce
    creds = answer_challenge(parse_challenge(first[1]), "REGISTER", f"sip:{REALM}", "alice",
                             USERS["alice"])
    assert server.verify(creds, "REGISTER", lookup, T0 + 1) is Verdict.OK


@pytest.mark.parametrize("alg", ["SHA-256", "MD5"])
def test_good_credentials_ok_for_both_algorithms(alg):
    server = make_server()
    creds = login(server, alg=alg)
    assert server.verify(creds, "REGISTER", lookup, T0 + 1) is Verdict.OK
    # through the wire format too, with a user needing escapes
    creds = parse_credentials(login(server, user="bob", alg=alg).to_header())
    assert server.verify(creds, "REGISTER", lookup, T0 + 1) is Verdict.OK


def test_wrong_password_and_unknown_user_fail_identically(monkeypatch):
    """An unknown user costs what a wrong password costs, the first time (H(A1), H(A2),
    the response) and again once H(A1) and H(A2) are remembered (the response only)."""
    hashed: list[bytes] = []

    def sha256(data: bytes):  # through the algorithm table, which compiled code reads too
        hashed.append(data)
        return hashlib.sha256(data)

    monkeypatch.setitem(digest._ALGORITHMS, "SHA-256", (sha256, False))
    work = {}
    for case, user, password, users in (("wrong", "alice", "nope", lookup),
                                        ("unknown", "carol", "x" * 16, {}.get)):
        server = make_server()
        for attempt in (1, 2):
            creds = login(server, user="bob", password=password, nc=attempt)
            creds.username = user  # as if computed for `user` (the digest fails anyway)
            hashed.clear()
            assert server.verify(creds, "REGISTER", users, T0) is Verdict.FAIL
            work[case, attempt] = hashed[:]
    assert {k: len(v) for k, v in work.items()} == {
        ("wrong", 1): 3, ("wrong", 2): 1, ("unknown", 1): 3, ("unknown", 2): 1}
    # The unknown user's H(A1) = H(user:realm:password), with a password not empty
    user, realm, password = work["unknown", 1][0].decode().split(":", 2)
    assert (user, realm) == ("carol", server.realm) and len(password) >= 16


def test_remembered_ha1_follows_the_password_and_algorithm():
    """H(A1) is remembered with the password and algorithm it came from: a new password
    takes effect at the next request, and MD5 and SHA-256 answers both check."""
    server = make_server()
    passwords = {"alice": "s3cret"}
    for alg in ("SHA-256", "MD5", "SHA-256"):
        creds = login(server, alg=alg)
        assert server.verify(creds, "REGISTER", passwords.get, T0) is Verdict.OK
    passwords["alice"] = "changed"
    assert server.verify(login(server), "REGISTER", passwords.get, T0) is Verdict.FAIL
    creds = login(server, password="changed")
    assert server.verify(creds, "REGISTER", passwords.get, T0) is Verdict.OK


def test_wrong_method_realm_or_algorithm_fail():
    server = make_server()
    creds = login(server)
    assert server.verify(creds, "INVITE", lookup, T0) is Verdict.FAIL
    other = DigestServer("elsewhere", secret=b"k" * 32)
    assert other.verify(creds, "REGISTER", lookup, T0) is Verdict.FAIL
    sha_only = make_server(algorithms=("SHA-256",))
    assert sha_only.verify(login(server, alg="MD5"), "REGISTER", lookup, T0) is Verdict.FAIL
    assert [c.algorithm for c in sha_only.challenges(T0)] == ["SHA-256"]


def test_uri_is_hashed_not_compared():
    server = make_server()
    challenge = server.challenges(T0)[0]
    creds = answer_challenge(challenge, "INVITE", "sip:rewritten@proxy", "alice", "s3cret")
    assert server.verify(creds, "INVITE", lookup, T0) is Verdict.OK
    creds.uri = "sip:other@proxy"  # changing uri after the fact breaks the hash
    creds.nc = "00000002"
    assert server.verify(creds, "INVITE", lookup, T0) is Verdict.FAIL


def test_expired_nonce_with_right_password_is_stale():
    server = make_server(nonce_ttl=60.0)
    creds = login(server, now=T0)
    assert server.verify(creds, "REGISTER", lookup, T0 + 61) is Verdict.STALE
    assert server.verify(login(server, password="x"), "REGISTER", lookup, T0 + 61) is Verdict.FAIL
    assert server.verify(creds, "REGISTER", lookup, T0 - 5) is Verdict.STALE  # clock stepped back
    fresh = login(server, now=T0 + 61)
    assert server.verify(fresh, "REGISTER", lookup, T0 + 61) is Verdict.OK


def test_forged_or_tampered_nonce_is_stale_with_the_password_and_fails_without():
    """RFC 2617 §3.2.1: stale=TRUE for an invalid nonce with a valid digest over it."""
    server = make_server()
    creds = login(server)
    raw = bytearray(base64.urlsafe_b64decode(creds.nonce))
    raw[0] ^= 1  # shift the timestamp
    for nonce in (
        base64.urlsafe_b64encode(bytes(raw)).decode(),
        creds.nonce[:-1],
        creds.nonce + "A",
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        creds.nonce.replace(creds.nonce[5], "+" if creds.nonce[5] != "+" else "/"),
    ):
        for password, verdict in ((USERS["alice"], Verdict.STALE), ("guess", Verdict.FAIL)):
            forged = answer_challenge(
                Challenge(REALM, nonce, "SHA-256", ["auth"]), "REGISTER", f"sip:{REALM}",
                "alice", password,
            )  # fmt: skip
            assert server.verify(forged, "REGISTER", lookup, T0) is verdict
        unknown = answer_challenge(Challenge(REALM, nonce, "SHA-256", ["auth"]), "REGISTER",
                                   f"sip:{REALM}", "mallory", "anything")
        assert server.verify(unknown, "REGISTER", lookup, T0) is Verdict.FAIL
    # a different secret (another box, or a new key): never OK, a fresh challenge (stale)
    assert DigestServer(REALM).verify(creds, "REGISTER", lookup, T0) is Verdict.STALE


def test_nonces_from_before_the_server_started_counting_are_stale():
    """The nonce key outlives a process: a request answered before a restart (nc=1) must
    not be taken again by the new process, whose counts start empty."""
    before = make_server()
    creds = login(before, now=T0)
    assert before.verify(creds, "REGISTER", lookup, T0 + 1) is Verdict.OK
    after = make_server(tracked_since=T0 + 10)  # the same key, restarted at T0 + 10
    assert after.verify(creds, "REGISTER", lookup, T0 + 11) is Verdict.STALE
    assert after.verify(login(after, user="alice", password="guess", now=T0 + 11),
                        "REGISTER", lookup, T0 + 12) is Verdict.FAIL
    fresh = login(after, now=T0 + 11)  # what the stale challenge leads to
    assert after.verify(fresh, "REGISTER", lookup, T0 + 12) is Verdict.OK


def test_a_nonce_names_its_process_and_only_that_process_counts_it():
    """SIP workers (appliance/workers.py): each process counts the uses of its own nonces;
    another's, with the right password, is FOREIGN (the worker hands the request to the
    daemon, the daemon challenges afresh) unless the daemon was told the worker counted
    it (`trusted`, b"V")."""
    daemon, worker = make_server(), make_server(issuer=1)
    assert nonce_issuer(daemon.challenges(T0)[0].nonce) == 0
    assert nonce_issuer(worker.challenges(T0)[0].nonce) == 1
    creds = login(worker, now=T0)
    assert worker.verify(creds, "REGISTER", lookup, T0) is Verdict.OK
    assert worker.verify(creds, "REGISTER", lookup, T0) is Verdict.FAIL  # replay
    assert daemon.verify(creds, "REGISTER", lookup, T0) is Verdict.FOREIGN
    wrong = login(worker, password="guess", now=T0)
    assert daemon.verify(wrong, "REGISTER", lookup, T0) is Verdict.FAIL
    daemon.trusted = 1
    assert daemon.verify(creds, "REGISTER", lookup, T0) is Verdict.OK
    assert daemon.verify(wrong, "REGISTER", lookup, T0) is Verdict.FAIL
    daemon.trusted = None
    # the daemon's own nonce at the worker: FOREIGN there, counted by the daemon
    mine = login(daemon, now=T0)
    assert worker.verify(mine, "REGISTER", lookup, T0) is Verdict.FOREIGN
    assert daemon.verify(mine, "REGISTER", lookup, T0) is Verdict.OK


@pytest.mark.parametrize("issuer", [0, 3])
def test_a_nonce_reads_the_same_from_the_minted_memo_and_from_its_mac(issuer):
    """`DigestServer._minted` answers for the nonces minted lately: what it gives must be
    what decoding the nonce gives (issue time, issuer), so every verdict is the same once
    the nonce has left the memo and is checked by its MAC."""
    server = make_server(issuer=issuer)
    twin = make_server(issuer=issuer)  # same secret, nothing minted: decodes every nonce
    kept = [login(server, now=T0 + 0.123456789 * i) for i in range(4)]
    for creds in kept:
        assert server._nonce_origin(creds.nonce) == twin._nonce_origin(creds.nonce)
        assert server._nonce_origin(creds.nonce) is not None
    for _ in range(2 * server._minted.size + 1):  # two generations of newer nonces
        server.make_nonce(T0 + 1)
    gone = kept[0].nonce
    assert server._minted.get(gone) is None
    assert server._nonce_origin(gone) == twin._nonce_origin(gone)
    # fresh from the memo, and from the MAC after it left: OK once, then a replay; late: stale
    fresh = login(server, now=T0 + 2)
    assert server._minted.get(fresh.nonce) is not None
    assert server.verify(fresh, "REGISTER", lookup, T0 + 2) is Verdict.OK
    assert server.verify(fresh, "REGISTER", lookup, T0 + 2) is Verdict.FAIL
    assert server.verify(kept[1], "REGISTER", lookup, T0 + 2) is Verdict.OK
    late = T0 + 2 + server.nonce_ttl + 1
    assert server.verify(kept[2], "REGISTER", lookup, late) is Verdict.STALE
    other = make_server(issuer=issuer + 1)
    assert other.verify(kept[3], "REGISTER", lookup, T0 + 2) is Verdict.FOREIGN


def test_nonce_count_replay_protection():
    server = make_server()
    challenge = server.challenges(T0)[0]

    def use(nc: int) -> Verdict:
        creds = answer_challenge(challenge, "REGISTER", f"sip:{REALM}", "alice", "s3cret", nc=nc)
        return server.verify(creds, "REGISTER", lookup, T0 + nc)

    assert use(1) is Verdict.OK
    assert use(1) is Verdict.FAIL  # exact replay
    assert use(2) is Verdict.OK
    assert use(5) is Verdict.OK  # gaps are fine
    assert use(3) is Verdict.FAIL  # going backwards is not
    bad = answer_challenge(challenge, "REGISTER", f"sip:{REALM}", "alice", "s3cret", nc=9)
    bad.nc = "00000000"
    assert server.verify(bad, "REGISTER", lookup, T0) is Verdict.FAIL


def test_same_timestamp_nonces_are_tracked_separately():
    server = make_server()
    a, b = login(server), login(server)  # two clients, challenged at the same instant
    assert a.nonce != b.nonce
    assert server.verify(a, "REGISTER", lookup, T0) is Verdict.OK
    assert server.verify(b, "REGISTER", lookup, T0) is Verdict.OK


def test_rfc2069_style_credentials_allowed_unless_disabled():
    server = make_server()
    nonce = server.challenges(T0)[0].nonce
    legacy = answer_challenge(
        Challenge(REALM, nonce, "MD5"), "REGISTER", "sip:x", "alice", "s3cret"
    )
    assert legacy.qop is None
    assert server.verify(legacy, "REGISTER", lookup, T0) is Verdict.OK
    assert server.verify(legacy, "REGISTER", lookup, T0 + 1) is Verdict.OK  # reuse within TTL
    assert server.verify(legacy, "REGISTER", lookup, T0 + 301) is Verdict.STALE
    strict = make_server(allow_no_qop=False)
    assert strict.verify(legacy, "REGISTER", lookup, T0) is Verdict.FAIL


def test_sess_algorithm_server():
    server = make_server(algorithms=("sha-256-sess", "MD5"))
    assert [c.algorithm for c in server.challenges(T0)] == ["SHA-256-sess", "MD5"]
    assert server.verify(login(server, alg="SHA-256-sess"), "REGISTER", lookup, T0) is Verdict.OK


def test_replay_table_expires_and_is_bounded():
    server = make_server(nonce_ttl=10.0, max_nonces=8)
    first = login(server, now=T0)
    assert server.verify(first, "REGISTER", lookup, T0) is Verdict.OK
    for i in range(50):
        now = T0 + i * 0.1
        assert server.verify(login(server, now=now), "REGISTER", lookup, now) is Verdict.OK
        assert server.tracked_nonces <= 8
    # `first` was evicted: a replay cannot slip through, it is told to re-challenge instead
    assert server.verify(first, "REGISTER", lookup, T0 + 5) is Verdict.STALE
    # after the TTL everything old is purged on the next insert
    now = T0 + 100
    assert server.verify(login(server, now=now), "REGISTER", lookup, now) is Verdict.OK
    assert server.tracked_nonces == 1


def test_a_full_replay_table_forgets_one_nonce_per_new_one():
    """The oldest counted nonce goes, and only it (a batch rebuilt at once stalled the
    process): the next oldest is still replay-protected, the forgotten one is STALE."""
    server = make_server(max_nonces=16)
    logins = [login(server, now=T0 + i) for i in range(17)]
    for i, creds in enumerate(logins):
        assert server.verify(creds, "REGISTER", lookup, T0 + i) is Verdict.OK
        assert server.tracked_nonces == min(i + 1, 16)
    assert server.verify(logins[1], "REGISTER", lookup, T0 + 17) is Verdict.FAIL   # replay
    assert server.verify(logins[0], "REGISTER", lookup, T0 + 17) is Verdict.STALE


def test_server_rejects_unsupported_algorithm():
    with pytest.raises(DigestError):
        DigestServer(REALM, algorithms=("SHA-512",))


def _mutations(sample: str, chars: str) -> list[str]:
    """`sample`, and it with each of `chars` inserted or substituted at each place, and
    with each character deleted."""
    variants = [sample]
    for i in range(len(sample)):
        for c in chars:
            variants += [sample[:i] + c + sample[i:], sample[:i] + c + sample[i + 1 :]]
        variants.append(sample[:i] + sample[i + 1 :])
    return variants


def test_fast_param_parser_agrees_with_the_general_one():
    """The fast path for what phones send gives what the general parser gives, or steps
    aside: checked over typical headers and one-character mutations of them."""
    server = make_server()
    samples = [c.to_header() for c in server.challenges(T0)]
    samples += [login(server, alg=a).to_header() for a in ("SHA-256", "MD5")]
    samples += [
        'Digest username="bob", realm="x", nonce="n", uri="sip:x", response="r", nc=00000001',
        'Digest username="a\\"b", realm="x"',
        "Digest realm=x,nonce=y",
        'digest realm="x", nonce="y"',
        'Digest realm="x" , nonce="y"',
        'Digest realm="x", realm="y"',
        'Digest realm="", nonce=""',
    ]
    checked = fast = 0
    for sample in samples:
        for value in _mutations(sample, ' ",=\\\tA\x00'):
            try:
                expected = digest._parse_params_general(value)
            except DigestError:
                expected = DigestError
            try:
                got = digest._parse_params(value)
            except DigestError:
                got = DigestError
            assert got == expected, value
            checked += 1
            fast += value.startswith("Digest ") and digest._split_fast(value) is not None
    assert checked > 10_000 and fast > 1_000


def _credentials_of_old(value: str) -> Credentials:
    """parse_credentials as it was before shapes: the general parser, then the checks."""
    p = digest._parse_params_general(value)
    for name in ("username", "realm", "nonce", "uri", "response"):
        if name not in p:
            raise DigestError(name)
    qop = p.get("qop")
    if qop is not None and ("cnonce" not in p or "nc" not in p):
        raise DigestError("qop")
    nc = p.get("nc")
    if nc is not None and not (len(nc) == 8 and all(c in "0123456789abcdefABCDEF" for c in nc)):
        raise DigestError("nc")
    return Credentials(p["username"], p["realm"], p["nonce"], p["uri"], p["response"],
                       digest.normalize_algorithm(p.get("algorithm", "MD5")),
                       None if qop is None else qop.lower(), p.get("cnonce"), nc,
                       p.get("opaque"), p)


def test_credentials_of_a_known_shape_are_what_the_general_parser_makes():
    """A value whose shape (its text outside the quotes) was seen before is cut at its
    DQUOTEs by the shape's items: the same Credentials (params in the same order) or
    the same refusal as the general parser, over SIPp's and other phones' spellings
    and one-character mutations of them, inside the quotes and out; each variant
    read twice, so that the second reading meets the shape the first one left."""
    sipp = ('Digest username="3000",realm="appliance",cnonce="6b8b4567",nc=00000001,'
            'qop=auth,uri="sip:127.0.0.1:5060",nonce="QdrCq_BHfN4AIUtI-tU3QoaHrCL9hApwI3j7",'
            'response="0123456789abcdef0123456789abcdef",algorithm=MD5')
    samples = [sipp, login(make_server(), alg="MD5").to_header(),
               'Digest username="a", realm="r", nonce="", uri="sip:x", response="r", '
               'qop="auth", nc=00000001, cnonce="c", opaque="o"',
               'Digest username="a", realm="r", nonce="n", uri="sip:x", response="r"']
    digest._SHAPES.clear()
    checked = 0
    for sample in samples:
        for value in _mutations(sample, ' ",=\\\tAx'):
            try:
                expected: object = _credentials_of_old(value)
            except DigestError:
                expected = DigestError
            for _ in range(2):
                try:
                    got: object = parse_credentials(value)
                except DigestError:
                    got = DigestError
                assert got == expected, value
                if isinstance(got, Credentials):
                    assert isinstance(expected, Credentials)
                    assert list(got.params.items()) == list(expected.params.items()), value
                checked += 1
    assert checked > 5_000
    # SIPp's one shape (and the others') is what every variant that kept it came back as
    assert 0 < len(digest._SHAPES) < 2_000


def test_the_shape_memo_is_what_a_known_shape_is_read_with():
    """A stored shape is used (its items, not a fresh parse), keyed by the text outside
    the quotes: so the test above exercised it."""
    value = 'Digest username="u",realm="r",nonce="n",uri="sip:x",response="r1",nc=00000001'
    digest._SHAPES.clear()
    assert parse_credentials(value).response == "r1"
    shape = 'Digest username="",realm="",nonce="",uri="",response="",nc=00000001'
    known = digest._SHAPES.get(shape)
    assert known is not None and known.checked and known.nc == "00000001"
    assert known.items == [("username", None), ("realm", None), ("nonce", None),
                           ("uri", None), ("response", None), ("nc", "00000001")]
    other = value.replace('"r1"', '"r2"').replace('"u"', '"someone else"')
    assert parse_credentials(other).username == "someone else"
    assert parse_credentials(other).response == "r2"
    # a planted shape says what its values read as: proof that the memo, not a parse, spoke
    known.items = [("username", None), ("realm", None), ("nonce", None), ("uri", None),
                   ("response", None), ("nc", "0000000f")]
    assert parse_credentials(other).params["nc"] == "0000000f"
    known.nc = "0000000e"  # the checked nc is kept with the shape, not read again
    assert parse_credentials(other).nc == "0000000e"
    digest._SHAPES.clear()
    # a backslash anywhere leaves it to the general parser: quoted-pairs undone
    assert parse_credentials(value.replace('"u"', '"a\\"b"')).username == 'a"b'
