use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, AlgorithmFamily, EncodingKey, Header};
use serde_json::json;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::*;
use crate::testing::{env, AUDIENCE, ISSUER, NOW, SECRET, SECRET_ENV};

const RSA: &str = include_str!("../../testdata/rsa.pem");
const RSA_OTHER: &str = include_str!("../../testdata/rsa-other.pem");
const EC256: &str = include_str!("../../testdata/ec256.pem");
const EC384: &str = include_str!("../../testdata/ec384.pem");
const ED25519: &str = include_str!("../../testdata/ed25519.pem");

fn enc_key(alg: Algorithm, pem: &str) -> EncodingKey {
    match alg.family() {
        AlgorithmFamily::Hmac => EncodingKey::from_secret(SECRET.as_bytes()),
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
    }
}

fn public_jwk(alg: Algorithm, pem: &str, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(&enc_key(alg, pem), alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).unwrap()
}

fn sign(alg: Algorithm, pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &enc_key(alg, pem)).unwrap()
}

fn claims(iss: &str) -> Value {
    json!({"iss": iss, "aud": AUDIENCE, "sub": "u-1", "exp": NOW + 600, "iat": NOW - 10,
           "email": "ada@example.com", "name": "Ada", "sid": "s-1", "roles": ["analyst", "viewer"]})
}

fn verifier(providers: Value) -> Verifier {
    let providers: Vec<ProviderConfig> = serde_json::from_value(providers).unwrap();
    Verifier::compile(&providers, 60, &env).unwrap()
}

fn compile_err(providers: Value) -> ConfigError {
    let providers: Vec<ProviderConfig> = serde_json::from_value(providers).unwrap();
    Verifier::compile(&providers, 60, &env).unwrap_err()
}

/// Each configuration fails to compile with an error at `path` whose message holds `message`.
fn assert_compile_errors<'a>(cases: impl IntoIterator<Item = (Value, &'a str, &'a str)>) {
    for (providers, path, message) in cases {
        let err = compile_err(providers.clone());
        assert_eq!(err.path, path, "{providers}: {err}");
        assert!(err.message.contains(message), "{err}");
    }
}

fn hs() -> Verifier {
    verifier(json!([{"name": "noetl", "issuer": ISSUER, "audiences": [AUDIENCE],
                     "algorithms": ["HS256", "HS384", "HS512"], "secret_env": SECRET_ENV, "roles_claim": "roles"}]))
}

fn asym() -> Verifier {
    let keys = json!([
        public_jwk(Algorithm::RS256, RSA, "rsa"),
        public_jwk(Algorithm::ES256, EC256, "ec256"),
        public_jwk(Algorithm::ES384, EC384, "ec384"),
        public_jwk(Algorithm::EdDSA, ED25519, "ed"),
    ]);
    // from_encoding_key records the alg it was made for; drop it from the RSA key so one key
    // serves RS and PS, as issuers' JWKS often do.
    let mut keys = keys;
    keys[0].as_object_mut().unwrap().remove("alg");
    verifier(json!([{"name": "auth0", "issuer": "https://tenant.auth0.com/", "audiences": [AUDIENCE],
                     "algorithms": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"],
                     "jwks": {"keys": keys}, "roles_claim": "https://noetl.io/roles"}]))
}

#[test]
fn every_hmac_algorithm_verifies() {
    let v = hs();
    for (alg, kid) in
        [(Algorithm::HS256, None), (Algorithm::HS384, None), (Algorithm::HS512, None), (Algorithm::HS256, Some("k1"))]
    {
        // A secret has no kid: a token that names one (PyJWT's `headers={"kid": ...}`,
        // Supabase's tokens) is verified by it all the same, as Envoy's jwt_authn does.
        let token = sign(alg, "", kid, &claims(ISSUER));
        let ok = v.verify(&token, NOW).unwrap_or_else(|e| panic!("{alg:?} kid {kid:?}: {e}"));
        assert_eq!(ok.session_key, "s-1");
        assert_eq!(ok.roles, ["analyst", "viewer"]);
        assert_eq!(ok.subject.as_deref(), Some("u-1"));
        assert_eq!(ok.email.as_deref(), Some("ada@example.com"));
        assert_eq!(ok.name.as_deref(), Some("Ada"));
        assert_eq!(ok.expires_at, NOW + 600);
        assert_eq!(ok.provider, "noetl");
    }
}

#[test]
fn every_asymmetric_algorithm_verifies_with_its_jwks_key() {
    let v = asym();
    let cases = [
        (Algorithm::RS256, RSA, "rsa"),
        (Algorithm::RS384, RSA, "rsa"),
        (Algorithm::RS512, RSA, "rsa"),
        (Algorithm::PS256, RSA, "rsa"),
        (Algorithm::PS384, RSA, "rsa"),
        (Algorithm::PS512, RSA, "rsa"),
        (Algorithm::ES256, EC256, "ec256"),
        (Algorithm::ES384, EC384, "ec384"),
        (Algorithm::EdDSA, ED25519, "ed"),
    ];
    for (alg, pem, kid) in cases {
        let mut c = claims("https://tenant.auth0.com/");
        c["https://noetl.io/roles"] = json!("developer admin");
        // With the kid, and without it (every fitting key is tried).
        for kid in [Some(kid), None] {
            let token = sign(alg, pem, kid, &c);
            let ok = v.verify(&token, NOW).unwrap_or_else(|e| panic!("{alg:?} kid {kid:?}: {e}"));
            assert_eq!(ok.roles, ["developer", "admin"]);
        }
    }
}

#[test]
fn wrong_key_unknown_kid_and_tampering_are_refused() {
    let v = asym();
    let c = claims("https://tenant.auth0.com/");
    assert_eq!(v.verify(&sign(Algorithm::RS256, RSA_OTHER, Some("rsa"), &c), NOW), Err(AuthError::BadSignature));
    assert_eq!(v.verify(&sign(Algorithm::RS256, RSA_OTHER, None, &c), NOW), Err(AuthError::BadSignature));
    assert_eq!(
        v.verify(&sign(Algorithm::RS256, RSA, Some("nope"), &c), NOW),
        Err(AuthError::UnknownKey(Some("nope".into())))
    );
    // A key without a kid is tried for any kid. (Of a fetched set, a token it does not verify
    // whose kid names no key is an unknown key: one that may have rotated in since the fetch.)
    let mut kidless = public_jwk(Algorithm::RS256, RSA, "x");
    kidless.as_object_mut().unwrap().remove("kid");
    let v2 = verifier(json!([{"name": "a", "issuer": "https://tenant.auth0.com/", "audiences": [AUDIENCE],
                               "algorithms": ["RS256"], "jwks": {"keys": [kidless]}, "roles_claim": "roles"}]));
    assert!(v2.verify(&sign(Algorithm::RS256, RSA, Some("any"), &c), NOW).is_ok());
    assert_eq!(v2.verify(&sign(Algorithm::RS256, RSA_OTHER, Some("any"), &c), NOW), Err(AuthError::BadSignature));
    assert_eq!(v2.verify(&sign(Algorithm::RS256, RSA_OTHER, None, &c), NOW), Err(AuthError::BadSignature));
    // An ES256 token presented with the ES384 key's kid: no key fits.
    assert!(matches!(v.verify(&sign(Algorithm::ES256, EC256, Some("ec384"), &c), NOW), Err(AuthError::UnknownKey(_))));

    let token = sign(Algorithm::RS256, RSA, Some("rsa"), &c);
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut forged = c.clone();
    forged["https://noetl.io/roles"] = json!(["admin"]);
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
    parts[1] = &forged_payload;
    assert_eq!(v.verify(&parts.join("."), NOW), Err(AuthError::BadSignature));
    let truncated_sig = &token[..token.len() - 4];
    assert_eq!(v.verify(truncated_sig, NOW), Err(AuthError::BadSignature));
}

#[test]
fn alg_none_and_algorithm_confusion_are_refused() {
    let v = hs();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(ISSUER)).unwrap());
    assert_eq!(v.verify(&format!("{header}.{payload}."), NOW), Err(AuthError::AlgNone));
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"None"}"#);
    assert_eq!(v.verify(&format!("{header}.{payload}.c2ln"), NOW), Err(AuthError::AlgNone));

    // HS256 signed with the RSA public key's bytes, as an attacker who knows the JWKS would:
    // the RS provider does not allow HS256 at all...
    let c = claims("https://tenant.auth0.com/");
    let token = sign(Algorithm::HS256, "", None, &c);
    assert_eq!(asym().verify(&token, NOW), Err(AuthError::AlgorithmNotAllowed("HS256".into())));
    // ...and a provider that allowed HS256 next to an RSA JWKS still has no HMAC key to use.
    let jwks = json!({"keys": [public_jwk(Algorithm::RS256, RSA, "rsa")]});
    let mixed = verifier(
        json!([{"name": "m", "issuer": "https://tenant.auth0.com/", "algorithms": ["RS256", "HS256"], "jwks": jwks}]),
    );
    assert_eq!(mixed.verify(&token, NOW), Err(AuthError::UnknownKey(None)));
    // An RS256 token for the HMAC provider: algorithm not allowed.
    let token = sign(Algorithm::RS256, RSA, None, &claims(ISSUER));
    assert_eq!(v.verify(&token, NOW), Err(AuthError::AlgorithmNotAllowed("RS256".into())));
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS1024"}"#);
    assert_eq!(
        v.verify(&format!("{header}.{payload}.c2ln"), NOW),
        Err(AuthError::UnsupportedAlgorithm("HS1024".into()))
    );
}

#[test]
fn time_claims_honour_the_clock_skew() {
    let v = hs();
    let at = |patch: Value| {
        let mut c = claims(ISSUER);
        for (k, val) in patch.as_object().unwrap() {
            if val.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = val.clone();
            }
        }
        v.verify(&sign(Algorithm::HS256, "", None, &c), NOW)
    };
    assert_eq!(at(json!({"exp": null})), Err(AuthError::MissingClaim("exp".into())));
    assert_eq!(at(json!({"exp": "soon"})), Err(AuthError::MissingClaim("exp".into())));
    assert!(at(json!({"exp": NOW - 59})).is_ok(), "inside the skew");
    assert_eq!(at(json!({"exp": NOW - 60})), Err(AuthError::Expired));
    assert_eq!(at(json!({"exp": NOW - 6000})), Err(AuthError::Expired));
    assert!(at(json!({"exp": (NOW + 10) as f64 + 0.5})).is_ok(), "fractional NumericDate");
    assert!(at(json!({"nbf": NOW + 60})).is_ok());
    assert_eq!(at(json!({"nbf": NOW + 61})), Err(AuthError::NotYetValid));
    assert_eq!(at(json!({"iat": NOW + 61})), Err(AuthError::NotYetValid));
    assert!(at(json!({"iat": null, "nbf": null})).is_ok());
    assert!(at(json!({"nbf": -5})).is_ok());
}

#[test]
fn issuer_and_audience() {
    let v = hs();
    let mut c = claims("https://evil.example");
    assert_eq!(
        v.verify(&sign(Algorithm::HS256, "", None, &c), NOW),
        Err(AuthError::UnknownIssuer("https://evil.example".into()))
    );
    c = claims(ISSUER);
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(v.verify(&sign(Algorithm::HS256, "", None, &c), NOW), Err(AuthError::MissingClaim("iss".into())));
    for (aud, ok) in [
        (json!("noetl-gateway"), true),
        (json!(["other", "noetl-gateway"]), true),
        (json!("other"), false),
        (json!([]), false),
        (json!(null), false),
        (json!(7), false),
    ] {
        let mut c = claims(ISSUER);
        c["aud"] = aud.clone();
        let got = v.verify(&sign(Algorithm::HS256, "", None, &c), NOW);
        assert_eq!(got.is_ok(), ok, "aud {aud}: {got:?}");
        if !ok {
            assert_eq!(got, Err(AuthError::InvalidAudience));
        }
    }
    // No audiences configured: any (or no) aud is accepted, as in Envoy's jwt_authn.
    let any = verifier(json!([{"name": "n", "issuer": ISSUER, "algorithms": ["HS256"], "secret_env": SECRET_ENV}]));
    let mut c = claims(ISSUER);
    c.as_object_mut().unwrap().remove("aud");
    assert!(any.verify(&sign(Algorithm::HS256, "", None, &c), NOW).is_ok());
}

#[test]
fn optional_claim_checks() {
    let v = verifier(json!([{"name": "n", "issuer": ISSUER, "algorithms": ["HS256"], "secret_env": SECRET_ENV,
        "required_claims": {"email_verified": true, "tenant": null},
        "allowed_email_domains": ["Example.com"], "organization": "org_1"}]));
    let base = || {
        let mut c = claims(ISSUER);
        c["email_verified"] = json!(true);
        c["tenant"] = json!("t");
        c["org_id"] = json!("org_1");
        c
    };
    let check = |c: &Value| v.verify(&sign(Algorithm::HS256, "", None, c), NOW);
    assert!(check(&base()).is_ok());
    let mut c = base();
    c["email_verified"] = json!(false);
    assert_eq!(check(&c), Err(AuthError::ClaimRejected("email_verified".into())));
    let mut c = base();
    c.as_object_mut().unwrap().remove("tenant");
    assert_eq!(check(&c), Err(AuthError::MissingClaim("tenant".into())));
    let mut c = base();
    c["email"] = json!("mallory@example.com.evil.org");
    assert_eq!(check(&c), Err(AuthError::ClaimRejected("email".into())));
    let mut c = base();
    c["email"] = json!("ADA@EXAMPLE.COM");
    assert!(check(&c).is_ok(), "domains compare case-insensitively");
    let mut c = base();
    c["org_id"] = json!("org_2");
    assert_eq!(check(&c), Err(AuthError::ClaimRejected("org_id".into())));

    // The domain check alone refuses an address its issuer says it never verified (a string
    // flag, as Cognito sends it, too), and takes one from an issuer that sends no flag.
    let domains = verifier(json!([{"name": "n", "issuer": ISSUER, "algorithms": ["HS256"], "secret_env": SECRET_ENV,
        "allowed_email_domains": ["example.com"]}]));
    let mut c = claims(ISSUER);
    let check = |c: &Value| domains.verify(&sign(Algorithm::HS256, "", None, c), NOW).map(|_| ());
    assert_eq!(check(&c), Ok(()));
    for (flag, refused) in [(json!(false), true), (json!("false"), true), (json!(true), false), (json!("true"), false)]
    {
        c["email_verified"] = flag.clone();
        let expected = if refused { Err(AuthError::ClaimRejected("email_verified".into())) } else { Ok(()) };
        assert_eq!(check(&c), expected, "{flag}");
    }

    let names = verifier(json!([{"name": "n", "issuer": ISSUER, "algorithms": ["HS256"], "secret_env": SECRET_ENV,
        "required_claims": ["tenant"]}]));
    assert_eq!(
        names.verify(&sign(Algorithm::HS256, "", None, &claims(ISSUER)), NOW),
        Err(AuthError::MissingClaim("tenant".into()))
    );
}

#[test]
fn session_key_prefers_sid_then_jti_then_digest() {
    let v = hs();
    let mut c = claims(ISSUER);
    c["jti"] = json!("j-1");
    assert_eq!(v.verify(&sign(Algorithm::HS256, "", None, &c), NOW).unwrap().session_key, "s-1");
    c.as_object_mut().unwrap().remove("sid");
    assert_eq!(v.verify(&sign(Algorithm::HS256, "", None, &c), NOW).unwrap().session_key, "j-1");
    c.as_object_mut().unwrap().remove("jti");
    let token = sign(Algorithm::HS256, "", None, &c);
    let key = v.verify(&token, NOW).unwrap().session_key;
    assert_eq!(key, token_digest(&token));
    assert_eq!(key.len(), 64);
}

#[test]
fn roles_claim_shapes() {
    let roles = |v: Value| roles_from(Some(&v));
    assert_eq!(roles(json!(["a", "b"])), (vec!["a".to_owned(), "b".to_owned()], 0));
    assert_eq!(roles(json!("  a   b ")), (vec!["a".to_owned(), "b".to_owned()], 0), "runs of spaces separate");
    assert_eq!(roles(json!({"a": 1})), (vec![], 1));
    assert_eq!(roles_from(None), (vec![], 0));
    assert_eq!(roles(Value::Null), (vec![], 0));
}

#[test]
fn role_names_are_values_never_syntax() {
    let long = "r".repeat(MAX_ROLE_BYTES + 1);
    let at_limit = "r".repeat(MAX_ROLE_BYTES);
    let items = json!(["viewer,admin", "", " admin", "admin\t", "a\u{a0}b", "a\u{2003}b", "a\u{85}b", "ad\nmin",
                       "x\u{7f}", long, 3, null, {"r": 1}, "analyst", at_limit, "dépôt-lecteur"]);
    let (kept, dropped) = roles_from(Some(&items));
    assert_eq!(kept, ["analyst", at_limit.as_str(), "dépôt-lecteur"]);
    assert_eq!(dropped, 13);
    // In the string form, only spaces separate: any other whitespace is inside a name.
    let (kept, dropped) = roles_from(Some(&json!("analyst viewer,admin a\tb dev\u{3000}ops")));
    assert_eq!((kept, dropped), (vec!["analyst".to_owned()], 3));
    assert!(!is_role_name(&"é".repeat(65)), "the limit is in bytes");
}

#[test]
fn dropped_roles_are_counted_once_per_verification() {
    let v = hs();
    let mut c = claims(ISSUER);
    c["roles"] = json!(["analyst", "viewer,admin", ""]);
    let t = sign(Algorithm::HS256, "", None, &c);
    let verified = v.verify(&t, NOW).unwrap();
    assert_eq!((verified.roles, verified.roles_dropped), (vec!["analyst".to_owned()], 2));
    for capacity in [2, 0] {
        let mut cache = VerifiedTokens::new(capacity);
        let _ = v.verify_cached(&t, NOW, &mut cache, &mut RemoteKeys::default()).unwrap();
        let _ = v.verify_cached(&t, NOW, &mut cache, &mut RemoteKeys::default()).unwrap();
        let want = if capacity == 0 { 4 } else { 2 };
        assert_eq!(cache.take_roles_dropped(), want, "capacity {capacity}: a cached token is read once");
        assert_eq!(cache.take_roles_dropped(), 0, "taking the count resets it");
    }
}

#[test]
fn token_shapes() {
    assert_eq!(token_kind("aGk.aGk.aGk"), TokenKind::Jws);
    assert_eq!(token_kind("aGk.aGk."), TokenKind::Jws);
    assert_eq!(token_kind("opaque-session-token"), TokenKind::Opaque);
    assert_eq!(token_kind("a.b"), TokenKind::Opaque);
    assert_eq!(token_kind("a.b.c.d"), TokenKind::Opaque);
    assert_eq!(token_kind(".b.c"), TokenKind::Opaque);
    assert_eq!(token_kind("a+b.c.d"), TokenKind::Opaque);
    assert_eq!(token_kind(""), TokenKind::Opaque);
    assert_eq!(token_kind("a..c"), TokenKind::Opaque);
    assert_eq!(token_kind("a.b.c."), TokenKind::Opaque);
    assert_eq!(token_kind("a.b.c d"), TokenKind::Opaque);
    assert_eq!(token_kind("a.b.\u{e9}"), TokenKind::Opaque);
    // Every string over a small alphabet up to six long reads as RFC 7515 section 7.1 says:
    // three base64url parts, the first two not empty.
    let rfc = |t: &str| {
        let parts: Vec<&str> = t.split('.').collect();
        let b64 = |p: &str| p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        parts.len() == 3 && parts.iter().all(|p| b64(p)) && !parts[0].is_empty() && !parts[1].is_empty()
    };
    let alphabet = ['a', '.', '_', '=', '-'];
    let mut tokens = vec![String::new()];
    for _ in 0..6 {
        let longer: Vec<String> = tokens.iter().flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}"))).collect();
        tokens.extend(longer);
        tokens.dedup();
    }
    for t in &tokens {
        assert_eq!(token_kind(t) == TokenKind::Jws, rfc(t), "{t:?}");
    }
}

#[test]
fn malformed_tokens_are_errors_never_panics() {
    let v = hs();
    let b = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let inputs = [
        String::new(),
        "..".into(),
        "a.b".into(),
        "!!!.???.***".into(),
        format!("{}.{}.", b("{}"), b("{}")),
        format!("{}.{}.x", b("[]"), b("{}")),
        format!("{}.{}.x", b(r#"{"alg":5}"#), b("{}")),
        format!("{}.{}.x", b(r#"{"alg":"HS256"}"#), b("not json")),
        format!("{}.{}.x", b(r#"{"alg":"HS256"}"#), b(r#"{"iss":7}"#)),
        format!("{}.{}.x", b(r#"{"alg":"HS256","kid":3}"#), b(r#"{"iss":"https://noetl.local"}"#)),
        format!("{}.{}.x", b(r#"{"alg":"HS256","crit":["b64"]}"#), b(r#"{"iss":"https://noetl.local"}"#)),
        format!("{}.{}.%%%", b(r#"{"alg":"HS256"}"#), b(r#"{"iss":"https://noetl.local","exp":1}"#)),
        format!("{}.{}", b(r#"{"alg":"HS256"}"#), b(r#"{"iss":"https://noetl.local"}"#)),
        "\u{0}\u{1}.é.ü".into(),
    ];
    // Each is refused with the reason its flaw calls for: an `iss` that is not a string is no
    // issuer, a signature that is not base64url cannot match; the rest is not a JWS at all.
    let not_a_string_iss = format!("{}.{}.x", b(r#"{"alg":"HS256"}"#), b(r#"{"iss":7}"#));
    let bad_signature = format!("{}.{}.%%%", b(r#"{"alg":"HS256"}"#), b(r#"{"iss":"https://noetl.local","exp":1}"#));
    for token in inputs {
        let err = v.verify(&token, NOW).unwrap_err();
        let want = match &token {
            t if *t == not_a_string_iss => "missing_claim",
            t if *t == bad_signature => "bad_signature",
            _ => "malformed",
        };
        assert_eq!(err.reason(), want, "{token}: {err}");
    }
}

/// A token whose header or payload names a key twice, correctly signed: one reader keeps the
/// first value, another the last, so it is refused before any claim is read.
#[test]
fn a_duplicate_key_in_a_signed_token_is_refused() {
    let v = hs();
    let b = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let signed = |header: &str, payload: &str| {
        let message = format!("{}.{}", b(header), b(payload));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &enc_key(Algorithm::HS256, ""), Algorithm::HS256);
        format!("{message}.{}", signature.unwrap())
    };
    let exp = NOW + 600;
    let payload = format!(r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{exp},"sid":"s-1","roles":["viewer"]}}"#);
    assert_eq!(v.verify(&signed(r#"{"alg":"HS256"}"#, &payload), NOW).unwrap().roles, ["viewer"]);
    let twice = payload.replace(r#""roles":["viewer"]"#, r#""roles":["viewer"],"roles":["admin"]"#);
    let err = v.verify(&signed(r#"{"alg":"HS256"}"#, &twice), NOW).unwrap_err();
    assert_eq!((err.reason(), err.to_string().contains("payload has a duplicate key")), ("malformed", true), "{err}");
    // Escaped, the key is still the same key.
    let escaped = payload.replace(r#""roles":["viewer"]"#, r#""roles":["viewer"],"r\u006fles":["admin"]"#);
    assert_eq!(v.verify(&signed(r#"{"alg":"HS256"}"#, &escaped), NOW).unwrap_err().reason(), "malformed");
    let err = v.verify(&signed(r#"{"alg":"HS256","alg":"none"}"#, &payload), NOW).unwrap_err();
    assert!(err.to_string().contains("header has a duplicate key"), "{err}");
}

#[test]
fn configuration_errors_name_the_field() {
    let cases = [
        (
            json!([{"name": "n", "issuer": "i", "algorithms": ["HS256"], "secret_env": "UNSET"}]),
            "[0].secret_env",
            "not set",
        ),
        (
            json!([{"name": "n", "issuer": "i", "algorithms": ["HS256"], "secret_env": "SHORT"}]),
            "[0].secret_env",
            "not set",
        ),
        (
            json!([{"name": "n", "issuer": "i", "algorithms": ["RS256"], "secret_env": SECRET_ENV}]),
            "[0].algorithms[0]",
            "HMAC",
        ),
        (
            json!([{"name": "n", "issuer": "i", "algorithms": ["none"], "secret_env": SECRET_ENV}]),
            "[0].algorithms[0]",
            "unsupported",
        ),
        (
            json!([{"name": "n", "issuer": "i", "algorithms": [], "secret_env": SECRET_ENV}]),
            "[0].algorithms",
            "at least one",
        ),
        (json!([{"name": "n", "issuer": "i", "algorithms": ["HS256"]}]), "[0]", "exactly one"),
        (
            json!([{"name": "n", "issuer": "i", "algorithms": ["RS256"], "jwks": {"keys": [{"kty": "RSA", "n": "a+b/", "e": "AQAB"}]}}]),
            "[0].jwks.keys[0].n",
            "not base64url",
        ),
        (
            json!([{"name": "n", "issuer": "i", "algorithms": ["RS256"], "jwks": {"keys": [{"kty": "RSA", "e": "AQAB"}]}}]),
            "[0].jwks.keys[0]",
            "key",
        ),
        (json!([{"name": "n", "issuer": "i", "algorithms": ["RS256"], "jwks": {}}]), "[0].jwks.keys", "keys"),
        (
            json!([{"name": "n", "issuer": "i", "algorithms": ["RS256"], "remote_jwks": {"cluster": "c", "uri": "keys"}}]),
            "[0].remote_jwks.uri",
            "URL",
        ),
        (
            json!([{"name": "a", "issuer": "i", "algorithms": ["HS256"], "secret_env": SECRET_ENV},
                {"name": "b", "issuer": "i", "algorithms": ["HS256"], "secret_env": SECRET_ENV}]),
            "[1].issuer",
            "providers[0]",
        ),
        // Sessions are cached under the provider's name: no two may share one, and none may
        // spell another's key (`a` + `b/x` against `a/b` + `x`) or an opaque token's.
        (
            json!([{"name": "a", "issuer": "i", "algorithms": ["HS256"], "secret_env": SECRET_ENV},
                {"name": "a", "issuer": "j", "algorithms": ["HS256"], "secret_env": SECRET_ENV}]),
            "[1].name",
            "providers[0]",
        ),
        (json!([{"name": "a/b", "issuer": "i", "algorithms": ["HS256"], "secret_env": SECRET_ENV}]), "[0].name", "'/'"),
        (
            json!([{"name": "opaque", "issuer": "i", "algorithms": ["HS256"], "secret_env": SECRET_ENV}]),
            "[0].name",
            "opaque",
        ),
    ];
    assert_compile_errors(cases);
    // A modulus over 4096 bits (leading zero bytes aside) is refused where it is configured,
    // not found out at every token.
    let rsa = |bytes: Vec<u8>| {
        json!([{"name": "n", "issuer": "i", "algorithms": ["RS256"],
                "jwks": {"keys": [{"kty": "RSA", "n": URL_SAFE_NO_PAD.encode(bytes), "e": "AQAB"}]}}])
    };
    assert_compile_errors([(rsa(vec![0xc5; 513]), "[0].jwks.keys[0].n", "4096")]);
    verifier(rsa([vec![0], vec![0xc5; 512]].concat()));
    let short = |name: &str| (name == "SHORT").then(|| "too-short".to_owned());
    let providers: Vec<ProviderConfig> =
        serde_json::from_value(json!([{"name": "n", "issuer": "i", "algorithms": ["HS256"], "secret_env": "SHORT"}]))
            .unwrap();
    let err = Verifier::compile(&providers, 60, &short).unwrap_err();
    assert!(err.message.contains("at least 32"), "{err}");
}

#[test]
fn remote_jwks_are_fetched_when_due_and_waited_for_while_they_can_bring_the_key() {
    let v = verifier(json!([{"name": "okta", "issuer": "https://example.okta.com", "algorithms": ["RS256"],
        "remote_jwks": {"cluster": "okta", "uri": "https://example.okta.com/oauth2/v1/keys?x=1", "cache_secs": 600}}]));
    let mut remote = RemoteKeys::default();
    let token = sign(Algorithm::RS256, RSA, Some("rsa"), &claims("https://example.okta.com"));

    // No set yet: the first request waits for the fetch it makes due.
    assert_eq!(v.verify_with(&token, NOW, Some(&mut remote)), Ok(Verification::AwaitingKeys));
    let due = remote.due(&v, NOW);
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].cluster.as_str(), due[0].authority.as_str(), due[0].path.as_str()),
        ("okta", "example.okta.com", "/oauth2/v1/keys?x=1")
    );
    assert!(remote.fetching(NOW));
    assert!(remote.due(&v, NOW + 1).is_empty(), "at most one fetch per JWKS_REFETCH_SECS");
    assert_eq!(v.verify_with(&token, NOW + 1, Some(&mut remote)), Ok(Verification::AwaitingKeys), "it is on its way");

    // A key the filter cannot use (a curve it lacks, an algorithm it does not know) is skipped,
    // said why, and the rest of the issuer's set serves.
    let p521 = json!({"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AQ", "y": "AQ"});
    let mut future = public_jwk(Algorithm::RS256, RSA_OTHER, "future");
    future["alg"] = json!("RS1024");
    let set = json!({"keys": [p521, public_jwk(Algorithm::RS256, RSA, "rsa"), future]});
    let loaded = remote.load(0, set.to_string().as_bytes(), NOW + 1).unwrap();
    assert_eq!(loaded.usable, 1);
    let skipped: Vec<&str> = loaded.skipped.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(skipped, ["keys[0].crv", "keys[2].alg"]);
    assert!(!remote.fetching(NOW + 1));
    assert!(v.verify_with(&token, NOW + 1, Some(&mut remote)).is_ok());
    assert!(remote.due(&v, NOW + 20).is_empty(), "fresh for cache_secs");

    // A key rotated in at the issuer: the token waits for a fetch of the set...
    let rotated = sign(Algorithm::RS256, RSA_OTHER, Some("rsa-2"), &claims("https://example.okta.com"));
    assert_eq!(v.verify_with(&rotated, NOW + 20, Some(&mut remote)), Ok(Verification::AwaitingKeys));
    assert_eq!(remote.due(&v, NOW + 20).len(), 1);
    // ...which brings nothing usable: the old keys stay, and until another fetch may go the
    // unknown key is answered at once (a flood of forged kids is not a flood of fetches).
    assert!(remote.load(0, b"not json", NOW + 20).is_err());
    // A set with only keys the filter cannot use is refused too.
    let unusable = json!({"keys": [{"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AQ", "y": "AQ"}]});
    assert!(remote.load(0, unusable.to_string().as_bytes(), NOW + 20).is_err());
    assert!(v.verify_with(&token, NOW + 21, Some(&mut remote)).is_ok(), "a bad fetch keeps the old keys");
    let unknown = Err(AuthError::UnknownKey(Some("rsa-2".into())));
    assert_eq!(v.verify_with(&rotated, NOW + 21, Some(&mut remote)), unknown);
    assert_eq!(v.verify_with(&rotated, NOW + 30, Some(&mut remote)), Ok(Verification::AwaitingKeys));

    // A fetch whose answer never comes holds requests for its timeout (2 s) and a second, no more.
    assert_eq!(remote.due(&v, NOW + 30).len(), 1);
    assert_eq!(v.verify_with(&rotated, NOW + 32, Some(&mut remote)), Ok(Verification::AwaitingKeys));
    assert_eq!(v.verify_with(&rotated, NOW + 33, Some(&mut remote)), unknown);
    assert!(!remote.fetching(NOW + 33));
    remote.failed(0);
    assert_eq!(remote.due(&v, NOW + 600).len(), 1, "expired after cache_secs");

    // A fetched key without a kid is tried for any kid, but a token it does not verify whose
    // kid names no key of the set may name one rotated in since: the set is fetched again.
    let mut kidless = public_jwk(Algorithm::RS256, RSA, "x");
    kidless.as_object_mut().unwrap().remove("kid");
    remote.load(0, json!({"keys": [kidless]}).to_string().as_bytes(), NOW + 600).unwrap();
    assert!(v.verify_with(&token, NOW + 600, Some(&mut remote)).is_ok());
    assert_eq!(v.verify_with(&rotated, NOW + 600, Some(&mut remote)), unknown);
    assert_eq!(v.verify_with(&rotated, NOW + 611, Some(&mut remote)), Ok(Verification::AwaitingKeys));
}

const KEYCLOAK: &str = "https://sso.example/realms/noetl";

fn discovering(extra: Value) -> Verifier {
    let mut discovery = json!({"cluster": "sso", "timeout_ms": 2000, "cache_secs": 600});
    for (k, v) in extra.as_object().into_iter().flatten() {
        discovery[k] = v.clone();
    }
    verifier(json!([{"name": "keycloak", "issuer": KEYCLOAK, "algorithms": ["RS256"], "discovery": discovery}]))
}

fn document(issuer: &str, jwks_uri: &str) -> Vec<u8> {
    json!({"issuer": issuer, "jwks_uri": jwks_uri, "authorization_endpoint": format!("{issuer}/auth")})
        .to_string()
        .into_bytes()
}

fn rsa_set(keys: &[(&str, &str)]) -> Vec<u8> {
    json!({"keys": keys.iter().map(|(pem, kid)| public_jwk(Algorithm::RS256, pem, kid)).collect::<Vec<_>>()})
        .to_string()
        .into_bytes()
}

/// A token of [`KEYCLOAK`] waiting for the discovery document, whose fetch was just sent.
fn awaiting_the_document() -> (Verifier, RemoteKeys, String) {
    let v = discovering(json!({}));
    let mut remote = RemoteKeys::default();
    let token = sign(Algorithm::RS256, RSA, Some("k1"), &claims(KEYCLOAK));
    assert_eq!(v.verify_with(&token, NOW, Some(&mut remote)), Ok(Verification::AwaitingKeys));
    assert_eq!(remote.due(&v, NOW).len(), 1);
    (v, remote, token)
}

#[test]
fn discovery_fetches_the_document_then_the_set_it_names() {
    let v = discovering(json!({"jwks_cluster": "sso-keys"}));
    let mut remote = RemoteKeys::default();
    let token = sign(Algorithm::RS256, RSA, Some("k1"), &claims(KEYCLOAK));

    assert_eq!(v.verify_with(&token, NOW, Some(&mut remote)), Ok(Verification::AwaitingKeys));
    let due = remote.due(&v, NOW);
    let expected = Fetch {
        provider: 0,
        kind: FetchKind::Discovery,
        cluster: "sso".into(),
        authority: "sso.example".into(),
        path: "/realms/noetl/.well-known/openid-configuration".into(),
        timeout_ms: 2000,
    };
    assert_eq!(due, vec![expected]);

    let uri = format!("{KEYCLOAK}/protocol/openid-connect/certs");
    let next = remote.load_discovery(&v, 0, &document(KEYCLOAK, &uri)).unwrap();
    let expected = Fetch {
        provider: 0,
        kind: FetchKind::KeySet,
        cluster: "sso-keys".into(),
        authority: "sso.example".into(),
        path: "/realms/noetl/protocol/openid-connect/certs".into(),
        timeout_ms: 2000,
    };
    assert_eq!(next, expected);
    assert!(remote.fetching(NOW), "the set's fetch is still to come");
    assert_eq!(v.verify_with(&token, NOW, Some(&mut remote)), Ok(Verification::AwaitingKeys));
    assert!(remote.due(&v, NOW + 1).is_empty(), "one fetch at a time");

    assert_eq!(remote.load(0, &rsa_set(&[(RSA, "k1")]), NOW + 1).map(|l| l.usable), Ok(1));
    assert!(v.verify_with(&token, NOW + 1, Some(&mut remote)).is_ok());
}

#[test]
fn discovery_of_an_issuer_with_a_trailing_slash_and_no_path_and_jwks_cluster_defaulting_to_cluster() {
    let v = verifier(json!([{"name": "auth0", "issuer": "https://tenant.auth0.com/", "algorithms": ["RS256"],
        "discovery": {"cluster": "auth0"}}]));
    let mut remote = RemoteKeys::default();
    let due = remote.due(&v, NOW);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].path, "/.well-known/openid-configuration");
    assert_eq!(due[0].authority, "tenant.auth0.com");
    assert_eq!(due[0].timeout_ms, 2000, "the default");
    let doc = document("https://tenant.auth0.com/", "https://tenant.auth0.com/.well-known/jwks.json");
    let next = remote.load_discovery(&v, 0, &doc).unwrap();
    assert_eq!((next.cluster.as_str(), next.path.as_str()), ("auth0", "/.well-known/jwks.json"));
}

#[test]
fn a_document_for_another_issuer_is_refused_and_no_set_is_fetched() {
    let (v, mut remote, token) = awaiting_the_document();

    // Exactly equal (section 4.3): a trailing slash is another issuer.
    for other in [format!("{KEYCLOAK}/"), "https://evil.example/realms/noetl".to_owned()] {
        let err = remote.load_discovery(&v, 0, &document(&other, "https://evil.example/certs")).unwrap_err();
        assert_eq!(err, DiscoveryError::IssuerMismatch { configured: KEYCLOAK.into(), document: other.clone() });
        let logged = err.to_string();
        assert!(logged.contains(KEYCLOAK) && logged.contains(&other), "both values in the log line: {logged}");
    }
    assert!(!remote.fetching(NOW), "the fetch has ended");
    assert_eq!(v.verify_with(&token, NOW + 1, Some(&mut remote)), Err(AuthError::KeysUnavailable));
}

#[test]
fn a_document_whose_jwks_uri_is_unusable_or_that_reads_two_ways_is_refused() {
    let https = discovering(json!({}));
    let uri_refused = |doc: &[u8]| {
        let mut remote = RemoteKeys::default();
        let _ = remote.due(&https, NOW);
        let err = remote.load_discovery(&https, 0, doc).unwrap_err();
        assert!(!remote.fetching(NOW));
        err
    };
    for bad in [
        "/protocol/openid-connect/certs",
        "certs",
        "ftp://sso.example/certs",
        "http://sso.example/certs",
        "https:///certs",
        "https://user@evil.example/certs",
        "https://sso.example/certs#k",
        "https://sso.example/c erts",
        "HTTPS://sso.example/certs",
    ] {
        let err = uri_refused(&document(KEYCLOAK, bad));
        assert!(matches!(&err, DiscoveryError::JwksUri { uri, .. } if uri == bad), "{bad}: {err}");
    }
    let cases: [(&[u8], DiscoveryError); 6] = [
        (br#"{"issuer": "https://sso.example/realms/noetl", "jwks_uri": 42}"#, DiscoveryError::Field("jwks_uri")),
        (br#"{"issuer": "https://sso.example/realms/noetl"}"#, DiscoveryError::Field("jwks_uri")),
        (br#"{"issuer": ["https://sso.example/realms/noetl"], "jwks_uri": "https://sso.example/certs"}"#, DiscoveryError::Field("issuer")),
        (br#"["https://sso.example/realms/noetl"]"#, DiscoveryError::Field("issuer")),
        (
            br#"{"issuer": "https://sso.example/realms/noetl", "jwks_uri": "https://sso.example/certs", "jwks_uri": "https://evil.example/certs"}"#,
            DiscoveryError::Json(crate::json::JsonError::DuplicateKey("jwks_uri".into())),
        ),
        (
            br#"{"issuer": "https://evil.example", "issuer": "https://sso.example/realms/noetl", "jwks_uri": "https://sso.example/certs"}"#,
            DiscoveryError::Json(crate::json::JsonError::DuplicateKey("issuer".into())),
        ),
    ];
    for (doc, expected) in cases {
        assert_eq!(uri_refused(doc), expected, "{}", String::from_utf8_lossy(doc));
    }
    assert!(matches!(uri_refused(b"not json"), DiscoveryError::Json(_)));

    // An http issuer (a test, a private network) may name an http set; an https one may not.
    let v = verifier(json!([{"name": "local", "issuer": "http://127.0.0.1:8080", "algorithms": ["RS256"],
        "discovery": {"cluster": "local"}}]));
    let mut remote = RemoteKeys::default();
    let due = remote.due(&v, NOW);
    assert_eq!(
        (due[0].authority.as_str(), due[0].path.as_str()),
        ("127.0.0.1:8080", "/.well-known/openid-configuration")
    );
    let next =
        remote.load_discovery(&v, 0, &document("http://127.0.0.1:8080", "http://127.0.0.1:8080/jwks?v=2")).unwrap();
    assert_eq!((next.authority.as_str(), next.path.as_str()), ("127.0.0.1:8080", "/jwks?v=2"));
}

#[test]
fn discovery_is_refreshed_with_the_set_and_a_changed_jwks_uri_is_followed() {
    let v = discovering(json!({}));
    let mut remote = RemoteKeys::default();
    let _ = remote.due(&v, NOW);
    let first = remote.load_discovery(&v, 0, &document(KEYCLOAK, "https://sso.example/certs-v1")).unwrap();
    assert_eq!(first.path, "/certs-v1");
    remote.load(0, &rsa_set(&[(RSA, "k1")]), NOW).unwrap();
    assert!(remote.due(&v, NOW + 599).is_empty(), "fresh for cache_secs");

    // At cache_secs: the document first, and the set from where it now says.
    let due = remote.due(&v, NOW + 600);
    assert_eq!(due.iter().map(|f| f.kind).collect::<Vec<_>>(), vec![FetchKind::Discovery]);
    let moved = remote.load_discovery(&v, 0, &document(KEYCLOAK, "https://keys.sso.example/v2/certs")).unwrap();
    assert_eq!((moved.authority.as_str(), moved.path.as_str()), ("keys.sso.example", "/v2/certs"));
    remote.load(0, &rsa_set(&[(RSA_OTHER, "k2")]), NOW + 600).unwrap();
    let rotated = sign(Algorithm::RS256, RSA_OTHER, Some("k2"), &claims(KEYCLOAK));
    assert!(v.verify_with(&rotated, NOW + 600, Some(&mut remote)).is_ok());

    // An unknown kid (past the refetch limit) also starts with the document.
    let next = sign(Algorithm::RS256, RSA, Some("k3"), &claims(KEYCLOAK));
    assert_eq!(v.verify_with(&next, NOW + 611, Some(&mut remote)), Ok(Verification::AwaitingKeys));
    assert_eq!(remote.due(&v, NOW + 611).iter().map(|f| f.kind).collect::<Vec<_>>(), vec![FetchKind::Discovery]);
}

#[test]
fn a_failed_or_refused_discovery_keeps_the_keys_fetched_before() {
    let v = discovering(json!({}));
    let mut remote = RemoteKeys::default();
    let token = sign(Algorithm::RS256, RSA, Some("k1"), &claims(KEYCLOAK));
    let _ = remote.due(&v, NOW);
    remote.load_discovery(&v, 0, &document(KEYCLOAK, "https://sso.example/certs")).unwrap();
    remote.load(0, &rsa_set(&[(RSA, "k1")]), NOW).unwrap();

    // The refresh's document fails (a timeout, a 503): the host says so.
    assert_eq!(remote.due(&v, NOW + 600).len(), 1);
    remote.failed(0);
    assert!(v.verify_with(&token, NOW + 601, Some(&mut remote)).is_ok(), "old keys still in use");

    // The next one is refused (another issuer): still the old keys.
    assert_eq!(remote.due(&v, NOW + 611).len(), 1);
    assert!(remote.load_discovery(&v, 0, &document("https://evil.example", "https://evil.example/certs")).is_err());
    assert!(v.verify_with(&token, NOW + 612, Some(&mut remote)).is_ok(), "old keys still in use");
}

#[test]
fn requests_wait_for_the_document_and_the_set_after_it_then_no_longer() {
    // timeout_ms 2000: 2 s for the document, 2 s for the set, and a second of slack.
    let (v, mut remote, token) = awaiting_the_document();
    assert_eq!(v.remote_sources().map(RemoteJwks::fetch_ms).max(), Some(4000));
    // The document arrives late in its timeout: the set's fetch still has its own.
    let _ = remote.load_discovery(&v, 0, &document(KEYCLOAK, "https://sso.example/certs")).unwrap();
    assert!(remote.fetching(NOW + 4));
    assert_eq!(v.verify_with(&token, NOW + 4, Some(&mut remote)), Ok(Verification::AwaitingKeys));
    // The set's answer never comes.
    assert!(!remote.fetching(NOW + 5));
    assert_eq!(v.verify_with(&token, NOW + 5, Some(&mut remote)), Err(AuthError::KeysUnavailable));
}

#[test]
fn discovery_configuration_errors_name_the_field() {
    let provider = |issuer: &str, sources: Value| {
        let mut p = json!({"name": "n", "issuer": issuer, "algorithms": ["RS256"]});
        for (k, v) in sources.as_object().into_iter().flatten() {
            p[k] = v.clone();
        }
        json!([p])
    };
    let cases = [
        (provider(KEYCLOAK, json!({"discovery": {"cluster": ""}})), "[0].discovery.cluster", "empty"),
        (
            provider(KEYCLOAK, json!({"discovery": {"cluster": "c", "jwks_cluster": ""}})),
            "[0].discovery.jwks_cluster",
            "empty",
        ),
        (provider("noetl", json!({"discovery": {"cluster": "c"}})), "[0].issuer", "http(s) URL"),
        (provider("https://", json!({"discovery": {"cluster": "c"}})), "[0].issuer", "no host"),
        (provider("https://sso.example/?realm=x", json!({"discovery": {"cluster": "c"}})), "[0].issuer", "no query"),
        (provider("https://sso.example/#x", json!({"discovery": {"cluster": "c"}})), "[0].issuer", "fragment"),
        (
            provider(
                KEYCLOAK,
                json!({"discovery": {"cluster": "c"}, "remote_jwks": {"cluster": "c", "uri": "https://x/k"}}),
            ),
            "[0]",
            "`discovery`",
        ),
    ];
    assert_compile_errors(cases);
    let unknown =
        json!([{"name": "n", "issuer": KEYCLOAK, "algorithms": ["RS256"], "discovery": {"cluster": "c", "uri": "x"}}]);
    assert!(serde_json::from_value::<Vec<ProviderConfig>>(unknown).is_err(), "unknown fields are refused");
}

#[test]
fn remote_jwks_without_keys_is_unavailable_not_a_crash() {
    let v = verifier(json!([{"name": "okta", "issuer": "https://example.okta.com", "algorithms": ["RS256"],
        "remote_jwks": {"cluster": "okta", "uri": "https://example.okta.com/v1/keys"}}]));
    let token = sign(Algorithm::RS256, RSA, Some("rsa"), &claims("https://example.okta.com"));
    assert_eq!(v.verify(&token, NOW), Err(AuthError::KeysUnavailable));
}

#[test]
fn jwks_set_type_round_trips() {
    // The JWKS our tests build is what `jsonwebtoken` itself parses as a set.
    let set: JwkSet = serde_json::from_value(json!({"keys": [public_jwk(Algorithm::ES256, EC256, "k")]})).unwrap();
    assert!(set.find("k").is_some());
}

#[test]
fn verified_tokens_are_remembered_until_they_expire() {
    let v = hs();
    let mut cache = VerifiedTokens::new(2);
    let t1 = sign(Algorithm::HS256, "", None, &claims(ISSUER));
    assert_eq!(
        v.verify_cached(&t1, NOW, &mut cache, &mut RemoteKeys::default()),
        v.verify(&t1, NOW).map(Verification::Verified)
    );
    assert_eq!(cache.len(), 1);
    assert!(v.verify_cached(&t1, NOW + 1, &mut cache, &mut RemoteKeys::default()).is_ok());
    assert_eq!(cache.len(), 1, "a hit adds nothing");
    // Past exp (+ skew) the remembered verdict no longer answers.
    assert_eq!(v.verify_cached(&t1, NOW + 600 + 60, &mut cache, &mut RemoteKeys::default()), Err(AuthError::Expired));
    // Failures are not remembered; the bound holds.
    let forged = format!("{t1}x");
    assert_eq!(v.verify_cached(&forged, NOW, &mut cache, &mut RemoteKeys::default()), Err(AuthError::BadSignature));
    for sid in ["a", "b", "c"] {
        let mut c = claims(ISSUER);
        c["sid"] = json!(sid);
        assert!(v
            .verify_cached(&sign(Algorithm::HS256, "", None, &c), NOW, &mut cache, &mut RemoteKeys::default())
            .is_ok());
    }
    assert_eq!(cache.len(), 2);
    let mut off = VerifiedTokens::new(0);
    assert!(v.verify_cached(&t1, NOW, &mut off, &mut RemoteKeys::default()).is_ok());
    assert!(off.is_empty());
}

#[test]
fn a_long_token_is_remembered_by_its_digest_and_a_changed_byte_is_checked_again() {
    let v = hs();
    let mut cache = VerifiedTokens::new(4);
    let mut c = claims(ISSUER);
    c["pad"] = json!("x".repeat(MAX_TOKEN_KEY_BYTES));
    let long = sign(Algorithm::HS256, "", None, &c);
    assert!(long.len() > MAX_TOKEN_KEY_BYTES);
    let verified = v.verify(&long, NOW).map(Verification::Verified);
    assert_eq!(v.verify_cached(&long, NOW, &mut cache, &mut RemoteKeys::default()), verified);
    assert_eq!(v.verify_cached(&long, NOW + 1, &mut cache, &mut RemoteKeys::default()), verified);
    assert_eq!(cache.len(), 1, "remembered once");
    // The same length, one byte of the signature changed: never answered from the memo.
    let mut forged = long.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(v.verify_cached(&forged, NOW, &mut cache, &mut RemoteKeys::default()), Err(AuthError::BadSignature));
    let short = sign(Algorithm::HS256, "", None, &claims(ISSUER));
    let mut forged = short.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    assert!(v.verify_cached(&short, NOW, &mut cache, &mut RemoteKeys::default()).is_ok());
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(v.verify_cached(&forged, NOW, &mut cache, &mut RemoteKeys::default()), Err(AuthError::BadSignature));
}

// ---- roles from several claims, role_map, scopes, azp ----

/// The HS256 provider with `extra` fields set (replacing its `roles_claim` if given).
fn hs_provider(extra: Value) -> Value {
    let mut provider = json!({"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE],
                              "algorithms": ["HS256"], "secret_env": SECRET_ENV});
    for (k, v) in extra.as_object().unwrap() {
        provider[k] = v.clone();
    }
    json!([provider])
}

/// What an HS256 token with `extra` claims verifies to under a provider with `provider` fields.
fn verified(provider: Value, extra: Value) -> Result<VerifiedToken, AuthError> {
    let mut c = claims(ISSUER);
    c.as_object_mut().unwrap().remove("roles");
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    verifier(hs_provider(provider)).verify(&sign(Algorithm::HS256, "", None, &c), NOW)
}

fn roles_of(provider: Value, extra: Value) -> (Vec<String>, u32) {
    let v = verified(provider, extra).unwrap();
    (v.roles, v.roles_dropped)
}

fn owned(roles: &[&str]) -> Vec<String> {
    roles.iter().map(|r| (*r).to_owned()).collect()
}

#[test]
fn keycloak_realm_and_client_roles_are_read_by_pointer_and_merged() {
    let provider = json!({"roles_claim": ["/realm_access/roles", "/resource_access/noetl/roles"]});
    let token = json!({"realm_access": {"roles": ["offline_access", "analyst"]},
                       "resource_access": {"noetl": {"roles": ["developer", "analyst"]},
                                           "account": {"roles": ["manage-account"]}}});
    assert_eq!(roles_of(provider.clone(), token), (owned(&["offline_access", "analyst", "developer"]), 0));
    // A claim the token lacks adds nothing; the other still counts.
    assert_eq!(roles_of(provider, json!({"realm_access": {"roles": ["viewer"]}})), (owned(&["viewer"]), 0));
}

#[test]
fn entra_roles_and_group_guids_are_mapped_and_unmapped_groups_dropped_uncounted() {
    let provider = json!({"roles_claim": ["roles", "groups"],
                          "role_map": {"NoETL.Admin": ["admin"], "5f1c0b9e-0000-4c1a-9d7e-2b1f00000001": ["analyst", "viewer"],
                                       "Task.Read": ["viewer"]}});
    let token = json!({"roles": ["NoETL.Admin", "Task.Read"],
                       "groups": ["5f1c0b9e-0000-4c1a-9d7e-2b1f00000001", "a0a0a0a0-0000-0000-0000-000000000000"]});
    // Deduplicated in first-occurrence order; the unmapped GUID is dropped and not counted.
    assert_eq!(roles_of(provider, token), (owned(&["admin", "viewer", "analyst"]), 0));
}

#[test]
fn cognito_groups_okta_groups_and_auth0_namespaced_claims_yield_roles() {
    let cognito =
        roles_of(json!({"roles_claim": "cognito:groups"}), json!({"cognito:groups": ["analyst", "developer"]}));
    assert_eq!(cognito, (owned(&["analyst", "developer"]), 0));
    // Okta's group names hold spaces: mapped, they are never read as role names.
    let okta = roles_of(
        json!({"roles_claim": "groups", "role_map": {"NoETL Admins": ["admin", "developer"], "Everyone": ["viewer"]},
               "required_scopes": ["noetl.run"]}),
        json!({"groups": ["Everyone", "NoETL Admins", "Sales"], "scp": ["openid", "noetl.run"]}),
    );
    assert_eq!(okta, (owned(&["viewer", "admin", "developer"]), 0));
    let auth0 = json!({"https://noetl.io/roles": ["analyst"], "roles": ["admin"]});
    assert_eq!(roles_of(json!({"roles_claim": "https://noetl.io/roles"}), auth0.clone()), (owned(&["analyst"]), 0));
    assert_eq!(roles_of(json!({"roles_claim": ["https://noetl.io/roles"]}), auth0), (owned(&["analyst"]), 0));
}

#[test]
fn pointers_unescape_and_never_read_a_top_level_name_with_a_slash() {
    let token = json!({"a/b": {"c~d": ["admin"]}, "x": ["analyst"], "/x": ["viewer"]});
    assert_eq!(roles_of(json!({"roles_claim": "/a~1b/c~0d"}), token.clone()), (owned(&["admin"]), 0));
    // `/x` is a pointer to `x`, never the claim named "/x".
    assert_eq!(roles_of(json!({"roles_claim": "/x"}), token.clone()), (owned(&["analyst"]), 0));
    assert_eq!(roles_of(json!({"roles_claim": "/a~1b/missing"}), token), (vec![], 0));
}

#[test]
fn unmapped_roles_keep_keeps_role_names_and_counts_the_rest() {
    let provider = json!({"roles_claim": "groups", "role_map": {"Admins": ["admin"]}, "unmapped_roles": "keep"});
    let token = json!({"groups": ["Admins", "analyst", "Sales Team", 7, "admin"]});
    assert_eq!(roles_of(provider.clone(), token.clone()), (owned(&["admin", "analyst"]), 2));
    let mut drop = provider;
    drop["unmapped_roles"] = json!("drop");
    // Dropped as unmapped: only the non-string is counted.
    assert_eq!(roles_of(drop, token.clone()), (owned(&["admin"]), 1));
    // Without a role_map every role name is kept, as before, and the rest counted.
    assert_eq!(roles_of(json!({"roles_claim": "groups"}), token), (owned(&["Admins", "analyst", "admin"]), 2));
}

#[test]
fn bad_pointers_mapped_roles_and_scopes_are_configuration_errors_naming_the_field() {
    let err = |provider: Value| {
        let providers: Vec<ProviderConfig> = serde_json::from_value(hs_provider(provider)).unwrap();
        Verifier::compile(&providers, 60, &env).unwrap_err()
    };
    assert_eq!(err(json!({"roles_claim": "/realm_access/ro~2les"})).path, "[0].roles_claim");
    assert_eq!(err(json!({"roles_claim": ["roles", "/a~"]})).path, "[0].roles_claim[1]");
    assert_eq!(err(json!({"roles_claim": ["roles", ""]})).path, "[0].roles_claim[1]");
    let bad_role = err(json!({"roles_claim": "groups", "role_map": {"Admins": ["admin", "data,admin"]}}));
    assert_eq!(bad_role.path, "[0].role_map.Admins[1]");
    assert!(bad_role.message.contains("data,admin"), "{bad_role}");
    assert_eq!(err(json!({"role_map": {"Admins": ["admin"]}})).path, "[0].role_map");
    assert_eq!(err(json!({"roles_claim": "roles", "unmapped_roles": "keep"})).path, "[0].unmapped_roles");
    assert_eq!(err(json!({"required_scopes": ["noetl.run", "a b"]})).path, "[0].required_scopes[1]");
    // Valid escapes and an empty single name (no roles, as before) compile.
    verifier(hs_provider(json!({"roles_claim": "/a~0~1b"})));
    verifier(hs_provider(json!({"roles_claim": ""})));
}

#[test]
fn required_scopes_are_read_from_scope_or_scp_and_two_readings_refused() {
    let provider = json!({"required_scopes": ["noetl.run", "noetl.read"]});
    let ok = |token: Value| verified(provider.clone(), token).map(|_| ());
    assert_eq!(ok(json!({"scope": "openid noetl.read  noetl.run"})), Ok(()));
    assert_eq!(ok(json!({"scp": ["noetl.run", "noetl.read"]})), Ok(()));
    assert_eq!(ok(json!({"scp": "noetl.run noetl.read"})), Ok(()));
    assert_eq!(ok(json!({"scope": "noetl.read noetl.run", "scp": ["noetl.run", "noetl.read"]})), Ok(()));
    assert_eq!(ok(json!({"scope": "noetl.read"})), Err(AuthError::InsufficientScope("noetl.run".into())));
    assert_eq!(
        ok(json!({"scope": "noetl.read", "scp": ["noetl.run", "noetl.read"]})),
        Err(AuthError::ConflictingScopes)
    );
    assert_eq!(ok(json!({})), Err(AuthError::MissingClaim("scope".into())));
    assert_eq!(ok(json!({"scp": ["noetl.run", 1]})), Err(AuthError::MissingClaim("scp".into())));
    assert_eq!(ok(json!({"scope": ["noetl.run", "noetl.read"]})), Ok(()));
    assert_eq!(ok(json!({"scope": ["noetl.run", 3]})), Err(AuthError::MissingClaim("scope".into())));
    assert_eq!(AuthError::InsufficientScope("x".into()).reason(), "insufficient_scope");
    assert_eq!(AuthError::ConflictingScopes.reason(), "conflicting_scopes");
    // Without required_scopes nothing about scopes is read.
    assert_eq!(verified(json!({}), json!({"scope": "a", "scp": 3})).map(|_| ()), Ok(()));
}

#[test]
fn authorized_parties_check_azp() {
    let provider = json!({"authorized_parties": ["noetl-ui", "noetl-cli"]});
    let ok = |token: Value| verified(provider.clone(), token).map(|_| ());
    assert_eq!(ok(json!({"azp": "noetl-cli"})), Ok(()));
    assert_eq!(ok(json!({"azp": "someone-else"})), Err(AuthError::ClaimRejected("azp".into())));
    assert_eq!(ok(json!({})), Err(AuthError::MissingClaim("azp".into())));
    assert_eq!(ok(json!({"azp": ["noetl-cli"]})), Err(AuthError::MissingClaim("azp".into())));
    assert_eq!(verified(json!({}), json!({"azp": "anyone"})).map(|_| ()), Ok(()));
}

#[test]
fn explain_says_what_each_claim_held_and_what_became_of_it() {
    let provider = json!({"roles_claim": ["roles", "/groups"], "role_map": {"Admins": ["admin", "developer"], "analyst": ["analyst"]}});
    let v = verifier(hs_provider(provider));
    let mut c = claims(ISSUER);
    c["roles"] = json!("analyst x,y");
    c["groups"] = json!(["Admins", "Sales", 3]);
    let token = sign(Algorithm::HS256, "", None, &c);
    let explained = v.explain(&token, NOW);
    assert_eq!(explained.provider.as_deref(), Some("idp"));
    let verified = explained.outcome.unwrap();
    assert_eq!((verified.roles, verified.roles_dropped), (owned(&["analyst", "admin", "developer"]), 1));
    let fates: Vec<(&str, Vec<(&str, RoleFate)>)> = explained
        .claims
        .iter()
        .map(|c| (c.claim.as_str(), c.items.iter().map(|(i, f)| (i.as_str(), f.clone())).collect()))
        .collect();
    assert_eq!(
        fates,
        [
            ("roles", vec![("analyst", RoleFate::Mapped(owned(&["analyst"]))), ("x,y", RoleFate::Unmapped)]),
            (
                "/groups",
                vec![
                    ("Admins", RoleFate::Mapped(owned(&["admin", "developer"]))),
                    ("Sales", RoleFate::Unmapped),
                    ("3", RoleFate::NotString)
                ]
            ),
        ]
    );
    assert_eq!(explained.claims[1].found, Some(json!(["Admins", "Sales", 3])));
    // Refused: the reason, the provider its issuer names, no roles.
    let late = v.explain(&token, NOW + 3600);
    assert_eq!((late.provider.as_deref(), late.outcome, late.claims), (Some("idp"), Err(AuthError::Expired), vec![]));
}
