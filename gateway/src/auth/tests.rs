use super::*;
use crate::keys::{SigningKey, claims_for, unix_now};
use herald_proto::NsGrant;

fn verifier(keys: &[&SigningKey]) -> Verifier {
    let map = keys
        .iter()
        .map(|k| (k.kid.clone().unwrap_or_default(), k.decoding_key()))
        .collect();
    Verifier::new(map, None, None)
}

#[test]
fn good_token_and_kid_selection() {
    let a = SigningKey::generate(Some("a".into())).unwrap();
    let b = SigningKey::generate(Some("b".into())).unwrap();
    let v = verifier(&[&a, &b]);
    let claims = claims_for("u1", NsGrant::list(vec![3, 1]), 60);
    assert_eq!(v.verify(&a.mint(&claims, None).unwrap()).unwrap(), claims);
    assert_eq!(v.verify(&b.mint(&claims, None).unwrap()).unwrap(), claims);
    let c = SigningKey::generate(Some("c".into())).unwrap();
    assert_eq!(
        v.verify(&c.mint(&claims, None).unwrap()),
        Err(AuthError::UnknownKey(Some("c".into())))
    );
    // No kid: refused with two keys, accepted with one.
    let anon = SigningKey::generate(None).unwrap();
    let t = anon.mint(&claims, None).unwrap();
    assert_eq!(v.verify(&t), Err(AuthError::UnknownKey(None)));
    assert!(verifier(&[&anon]).verify(&t).is_ok());
}

#[test]
fn bad_tokens() {
    let k = SigningKey::generate(None).unwrap();
    let v = verifier(&[&k]);
    let other = SigningKey::generate(None).unwrap();
    let claims = claims_for("u", NsGrant::All, 60);
    assert_eq!(
        v.verify(&other.mint(&claims, None).unwrap()),
        Err(AuthError::Signature)
    );
    assert!(matches!(v.verify("garbage"), Err(AuthError::Malformed(_))));
    let mut old = claims.clone();
    old.exp = unix_now() - LEEWAY_S - 5;
    assert_eq!(
        v.verify(&k.mint(&old, None).unwrap()),
        Err(AuthError::Expired)
    );
    // Within the leeway it still passes.
    old.exp = unix_now() - 5;
    assert!(v.verify(&k.mint(&old, None).unwrap()).is_ok());
    let mut early = claims.clone();
    early.nbf = Some(unix_now() + LEEWAY_S + 60);
    assert_eq!(
        v.verify(&k.mint(&early, None).unwrap()),
        Err(AuthError::NotYetValid)
    );
    // An HS256 token is refused whatever its signature.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"x"),
    )
    .unwrap();
    assert_eq!(v.verify(&hs), Err(AuthError::Algorithm(Algorithm::HS256)));
}

#[test]
fn issuer_and_audience() {
    let k = SigningKey::generate(None).unwrap();
    let map = [(String::new(), k.decoding_key())].into_iter().collect();
    let v = Verifier::new(map, Some("meta"), Some("herald"));
    let mut c = claims_for("u", NsGrant::All, 60);
    assert_eq!(
        v.verify(&k.mint(&c, Some("herald")).unwrap()),
        Err(AuthError::Issuer)
    );
    c.iss = Some("meta".into());
    assert!(v.verify(&k.mint(&c, Some("herald")).unwrap()).is_ok());
    assert_eq!(
        v.verify(&k.mint(&c, Some("other")).unwrap()),
        Err(AuthError::Issuer)
    );
}

#[test]
fn pem_round_trip() {
    let k = SigningKey::generate(Some("x".into())).unwrap();
    let back = SigningKey::from_pem(&k.private_pem(), Some("x".into())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.pub.pem");
    std::fs::write(&path, k.public_pem()).unwrap();
    let keys = Verifier::load_keys(&[format!("x={}", path.display())]).unwrap();
    let v = Verifier::new(keys, None, None);
    let claims = claims_for("u", NsGrant::All, 60);
    assert!(v.verify(&back.mint(&claims, None).unwrap()).is_ok());
}
