//! Certificates for a deployment (`tarp-keeper certs`): one CA, a server certificate
//! for the keeper, and a client certificate for every forwarder node, application and
//! operator, each naming its [`Identity`] as a `spiffe://tarp/KIND/NAME` URI. Keys are
//! ECDSA P-256, made here and written with mode 0600; nothing secret leaves the folder.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::auth::Identity;

/// The server name clients check on the keeper's certificate unless told another.
pub const KEEPER_SERVER_NAME: &str = "tarp-keeper";

/// A certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused.
    #[error("making the certificate: {0}")]
    Make(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The folder has a CA already (it is never replaced: every certificate it signed
    /// would stop working).
    #[error("{0} exists: a CA is never overwritten (use another --dir)")]
    Exists(PathBuf),
}

/// A certificate and its key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// What a certificate is for.
#[derive(Debug, Clone)]
pub enum Subject {
    /// The keeper's server certificate: these DNS names and addresses.
    Keeper {
        /// DNS names (clients dialling a Unix socket check [`KEEPER_SERVER_NAME`]).
        dns: Vec<String>,
        /// IP addresses.
        ips: Vec<IpAddr>,
    },
    /// A client: a node, an application or an operator.
    Client(Identity),
}

impl Subject {
    /// The file stem its certificate is written under: `keeper`, `node-ID`,
    /// `app-NAME`, `operator-NAME`.
    pub fn file_stem(&self) -> String {
        match self {
            Subject::Keeper { .. } => "keeper".into(),
            Subject::Client(id) => id.to_string().replace('/', "-"),
        }
    }
}

fn validity(p: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
}

/// A new CA.
pub fn new_ca(name: &str) -> Result<Issued, CertError> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut p, 3650);
    let cert = p.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate for `subject`, signed by `ca`.
pub fn issue(ca: &Issued, subject: &Subject) -> Result<Issued, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    match subject {
        Subject::Keeper { dns, ips } => {
            p.distinguished_name
                .push(DnType::CommonName, KEEPER_SERVER_NAME);
            for d in dns {
                p.subject_alt_names
                    .push(SanType::DnsName(d.clone().try_into()?));
            }
            for ip in ips {
                p.subject_alt_names.push(SanType::IpAddress(*ip));
            }
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        Subject::Client(id) => {
            p.distinguished_name
                .push(DnType::CommonName, id.to_string());
            p.subject_alt_names.push(SanType::URI(id.uri().try_into()?));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    validity(&mut p, 825);
    let cert = p.signed_by(&key, &issuer)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_pair(dir: &Path, stem: &str, issued: &Issued) -> Result<(PathBuf, PathBuf), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, &issued.cert_pem).map_err(io_err(&cert))?;
    // The key is created 0600, never readable by others even for a moment.
    let _ = std::fs::remove_file(&key);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key)
        .map_err(io_err(&key))?;
    f.write_all(issued.key_pem.as_bytes())
        .map_err(io_err(&key))?;
    Ok((cert, key))
}

/// Makes a CA in `dir` (`ca.pem`, `ca.key`); refuses a folder that has one.
pub fn init_ca(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), CertError> {
    let cert = dir.join("ca.pem");
    if cert.exists() {
        return Err(CertError::Exists(cert));
    }
    write_pair(dir, "ca", &new_ca(name)?)
}

/// Reads the CA in `dir`.
pub fn load_ca(dir: &Path) -> Result<Issued, CertError> {
    let (c, k) = (dir.join("ca.pem"), dir.join("ca.key"));
    Ok(Issued {
        cert_pem: std::fs::read_to_string(&c).map_err(io_err(&c))?,
        key_pem: std::fs::read_to_string(&k).map_err(io_err(&k))?,
    })
}

/// Issues a certificate for `subject` from the CA in `dir` and writes it there as
/// `STEM.pem` and `STEM.key`; returns their paths.
pub fn issue_into(dir: &Path, subject: &Subject) -> Result<(PathBuf, PathBuf), CertError> {
    let ca = load_ca(dir)?;
    write_pair(dir, &subject.file_stem(), &issue(&ca, subject)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::identity_of_cert;

    #[test]
    fn a_client_certificate_names_its_identity() {
        let ca = new_ca("test CA").unwrap();
        let id = Identity::parse("node/pop-ams-1").unwrap();
        let issued = issue(&ca, &Subject::Client(id.clone())).unwrap();
        let der = pem::parse(&issued.cert_pem).unwrap();
        assert_eq!(identity_of_cert(der.contents()).unwrap(), id);
        let server = issue(
            &ca,
            &Subject::Keeper {
                dns: vec![KEEPER_SERVER_NAME.into()],
                ips: vec!["127.0.0.1".parse().unwrap()],
            },
        )
        .unwrap();
        let der = pem::parse(&server.cert_pem).unwrap();
        assert!(identity_of_cert(der.contents())
            .unwrap_err()
            .contains("names no tarp identity"));
    }

    #[test]
    fn a_ca_is_never_overwritten_and_keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = init_ca(dir.path(), "ca").unwrap();
        assert!(matches!(
            init_ca(dir.path(), "ca"),
            Err(CertError::Exists(_))
        ));
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let id = Identity::parse("app/billing").unwrap();
        let (cert, key) = issue_into(dir.path(), &Subject::Client(id)).unwrap();
        assert!(cert.ends_with("app-billing.pem") && key.ends_with("app-billing.key"));
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
