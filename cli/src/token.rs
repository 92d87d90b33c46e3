//! `token`: mint development JWTs (HS256 from the same environment variable the filter reads,
//! or RS/PS/ES/EdDSA from a PEM private key).

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use jsonwebtoken::{encode, Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::{json, Map, Value};

use crate::Failure;

/// Options of `token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The `iss` claim.
    #[arg(long, default_value = "https://noetl.local")]
    issuer: String,
    /// The `aud` claim.
    #[arg(long, default_value = "noetl-gateway")]
    audience: String,
    /// The `sub` claim (the user id).
    #[arg(long, default_value = "1")]
    sub: String,
    /// The `email` claim.
    #[arg(long)]
    email: Option<String>,
    /// The `name` claim.
    #[arg(long)]
    name: Option<String>,
    /// Roles (comma-separated), put in `--roles-claim`.
    #[arg(long, value_delimiter = ',')]
    roles: Vec<String>,
    /// The claim that holds the roles.
    #[arg(long, default_value = "roles")]
    roles_claim: String,
    /// The `sid` claim (the session id); a random one if absent.
    #[arg(long)]
    sid: Option<String>,
    /// Lifetime in seconds (negative mints an expired token).
    #[arg(long, default_value_t = 3600, allow_hyphen_values = true)]
    ttl: i64,
    /// Signing algorithm.
    #[arg(long, default_value = "HS256")]
    alg: String,
    /// Environment variable with the HMAC secret (HS*).
    #[arg(long, default_value = "PLAYBOOK_GUARD_HS256_SECRET")]
    secret_env: String,
    /// PEM private key (RS*, PS*, ES*, EdDSA).
    #[arg(long)]
    key: Option<std::path::PathBuf>,
    /// The `kid` header.
    #[arg(long)]
    kid: Option<String>,
    /// Extra claims as a JSON object, merged last.
    #[arg(long)]
    claims: Option<String>,
}

/// Prints one token.
pub fn run(args: &TokenArgs) -> Result<(), Failure> {
    let alg = Algorithm::from_str(&args.alg).map_err(|_| Failure(format!("unsupported algorithm {:?}", args.alg)))?;
    let key = match alg.family() {
        AlgorithmFamily::Hmac => {
            let secret = std::env::var(&args.secret_env)
                .map_err(|_| Failure(format!("set {} to the filter's HMAC secret", args.secret_env)))?;
            EncodingKey::from_secret(secret.as_bytes())
        }
        family => {
            let path = args.key.as_ref().ok_or_else(|| Failure(format!("--key PEM is needed for {}", args.alg)))?;
            let pem = std::fs::read(path).map_err(|e| Failure(format!("{}: {e}", path.display())))?;
            match family {
                AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem)?,
                AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem)?,
                _ => EncodingKey::from_ed_pem(&pem)?,
            }
        }
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let sid = args.sid.clone().unwrap_or_else(|| format!("dev-{:x}", now ^ i64::from(std::process::id())));
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(args.issuer));
    claims.insert("aud".into(), json!(args.audience));
    claims.insert("sub".into(), json!(args.sub));
    claims.insert("sid".into(), json!(sid));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + args.ttl));
    if let Some(email) = &args.email {
        claims.insert("email".into(), json!(email));
    }
    if let Some(name) = &args.name {
        claims.insert("name".into(), json!(name));
    }
    if !args.roles.is_empty() {
        claims.insert(args.roles_claim.clone(), json!(args.roles));
    }
    if let Some(extra) = &args.claims {
        let extra: Value = serde_json::from_str(extra).map_err(|e| Failure(format!("--claims: {e}")))?;
        let Value::Object(extra) = extra else {
            return Err(Failure("--claims must be a JSON object".into()));
        };
        claims.extend(extra);
    }
    let mut header = Header::new(alg);
    header.kid = args.kid.clone();
    println!("{}", encode(&header, &claims, &key)?);
    Ok(())
}
