//! Who is calling, and what they may do.
//!
//! With `[keeper.tls]` every caller presents a client certificate from the deployment's
//! CA, and its identity is the one `spiffe://tarp/KIND/NAME` URI among the
//! certificate's subject alternative names (`tarp-keeper certs` makes them):
//!
//! * `node/ID`: a forwarder; it may subscribe to, acknowledge and report for node `ID`
//!   only, and call nothing of the application API;
//! * `app/NAME`: an application; a circuit it activates belongs to it, and it may
//!   release, renew, get, list and watch only its own circuits;
//! * `operator/NAME`: may do everything, on every circuit and as every node.
//!
//! Without TLS (loopback TCP or a Unix socket only) the caller is whoever
//! `keeper.plaintext_identity` names; with none configured every call is refused.

use std::fmt;

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tonic::{Request, Status};

/// The scheme and trust domain of a tarp identity URI in a certificate.
pub const URI_PREFIX: &str = "spiffe://tarp/";

/// A caller's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// An operator: may do everything.
    Operator(String),
    /// An application: owns the circuits it activates.
    App(String),
    /// A forwarder: speaks for this node only.
    Node(String),
}

impl Identity {
    /// `operator/NAME`, `app/NAME` or `node/ID`. The error is a one-line reason.
    pub fn parse(s: &str) -> Result<Identity, String> {
        let (kind, name) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected operator/NAME, app/NAME or node/ID"))?;
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
        if !ok {
            return Err(format!(
                "{s:?}: the name must be 1 to 128 letters, digits, '-', '_', '.' or '@'"
            ));
        }
        let name = name.to_string();
        match kind {
            "operator" => Ok(Identity::Operator(name)),
            "app" => Ok(Identity::App(name)),
            "node" => Ok(Identity::Node(name)),
            _ => Err(format!(
                "{s:?}: the kind must be operator, app or node, not {kind:?}"
            )),
        }
    }

    /// The identity a `spiffe://tarp/KIND/NAME` URI names, if it is one.
    pub fn from_uri(uri: &str) -> Option<Result<Identity, String>> {
        uri.strip_prefix(URI_PREFIX).map(Identity::parse)
    }

    /// Its URI, as certificates carry it.
    pub fn uri(&self) -> String {
        format!("{URI_PREFIX}{self}")
    }

    /// True for an operator.
    pub fn is_operator(&self) -> bool {
        matches!(self, Identity::Operator(_))
    }

    /// May it act on a circuit that belongs to `owner`?
    pub fn may_touch(&self, owner: &str) -> bool {
        match self {
            Identity::Operator(_) => true,
            Identity::App(_) => self.to_string() == owner,
            Identity::Node(_) => false,
        }
    }

    /// Whom a circuit it activates belongs to; nodes activate nothing.
    pub fn owner(&self) -> Result<String, Status> {
        match self {
            Identity::Node(_) => Err(Status::permission_denied(format!(
                "{self} is a forwarder's identity: it may not call the application API"
            ))),
            _ => Ok(self.to_string()),
        }
    }

    /// The `Status` for acting on a circuit of `owner` it may not touch.
    pub fn denied(&self, what: &str, id: u64, owner: &str) -> Status {
        let whose = if owner.is_empty() {
            "it has no owner (only an operator may)".to_string()
        } else {
            format!("it belongs to {owner}")
        };
        Status::permission_denied(format!("{self} may not {what} circuit {id}: {whose}"))
    }

    /// Checks that it may speak for forwarder node `node`.
    pub fn may_be_node(&self, node: &str) -> Result<(), Status> {
        match self {
            Identity::Operator(_) => Ok(()),
            Identity::Node(n) if n == node => Ok(()),
            _ => Err(Status::permission_denied(format!(
                "{self} may not subscribe as node {node}: its certificate must name node/{node}"
            ))),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Operator(n) => write!(f, "operator/{n}"),
            Identity::App(n) => write!(f, "app/{n}"),
            Identity::Node(n) => write!(f, "node/{n}"),
        }
    }
}

/// The identity in a certificate (DER): its one `spiffe://tarp/...` URI SAN.
pub fn identity_of_cert(der: &[u8]) -> Result<Identity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not a readable X.509 certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative names: {e}"))?;
    let mut found = Vec::new();
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            if let Some(id) = Identity::from_uri(uri) {
                found.push(id?);
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "it names no tarp identity (a {URI_PREFIX}KIND/NAME URI; tarp-keeper certs makes them)"
        )),
        _ => Err("it names more than one tarp identity".into()),
    }
}

/// How the server tells who a caller is.
#[derive(Debug, Clone)]
pub struct Auth {
    /// Callers present certificates (TLS is on).
    tls: bool,
    /// Who a plaintext caller is.
    plaintext: Option<Identity>,
}

impl Auth {
    /// Identities from client certificates.
    pub fn tls() -> Auth {
        Auth {
            tls: true,
            plaintext: None,
        }
    }

    /// Every caller is `identity` (plaintext on loopback or a Unix socket); `None`
    /// refuses everyone.
    pub fn plaintext(identity: Option<Identity>) -> Auth {
        Auth {
            tls: false,
            plaintext: identity,
        }
    }

    /// Who made this call, or `UNAUTHENTICATED` saying why nobody can tell.
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        if !self.tls {
            return self.plaintext.clone().ok_or_else(|| {
                Status::unauthenticated(
                    "this keeper takes plaintext calls from nobody: it names no keeper.plaintext_identity",
                )
            });
        }
        let ext = req.extensions();
        let certs = ext
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .or_else(|| {
                ext.get::<TlsConnectInfo<UdsConnectInfo>>()
                    .and_then(|i| i.peer_certs())
            });
        let leaf = certs.as_ref().and_then(|c| c.first()).ok_or_else(|| {
            Status::unauthenticated(
                "no client certificate: this keeper requires one from its CA (tarpctl --cert/--key, a forwarder's [keeper_tls] cert/key)",
            )
        })?;
        identity_of_cert(leaf.as_ref())
            .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_parse_and_print() {
        for s in ["operator/alice", "app/billing", "node/pop-ams-1"] {
            assert_eq!(Identity::parse(s).unwrap().to_string(), s);
        }
        for bad in ["alice", "app/", "user/x", "app/a b", "node/a/b"] {
            assert!(Identity::parse(bad).is_err(), "{bad}");
        }
        let app = Identity::parse("app/billing").unwrap();
        assert_eq!(app.uri(), "spiffe://tarp/app/billing");
        assert!(app.may_touch("app/billing"));
        assert!(!app.may_touch("app/other"));
        assert!(!app.may_touch(""));
        assert!(Identity::parse("operator/x").unwrap().may_touch(""));
        assert!(!Identity::parse("node/a").unwrap().may_touch("node/a"));
        assert!(Identity::Node("a".into()).may_be_node("a").is_ok());
        assert_eq!(
            Identity::Node("a".into())
                .may_be_node("b")
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
    }
}
